"""A sweep's plan and its accounts: every job composed, validated and checked for a finished
earlier run before any is launched (`plan_jobs`), its manifest (`write_manifest`), each job's
outcome, and the closing line (`closing_line`, `interrupted_line`)."""

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig

from rnnjax.app.data import prepare_data
from rnnjax.sweeps.checks import check_job_name, check_tracker
from rnnjax.sweeps.errors import error_line, fail
from rnnjax.sweeps.names import job_name
from rnnjax.sweeps.slurm import TaskEnded
from rnnjax.sweeps.task import POSITION, job_config, task_config


class Job(NamedTuple):
    """One job of a sweep, as the sweeper plans it."""

    number: int  # 1..N, its place in Hydra's job list
    overrides: list[str]  # its task overrides, as Hydra's BasicSweeper made them
    dir: Path  # its output directory: the sweep directory / job_name(overrides)
    done: dict | None  # the summary of a finished earlier run that resume skips, else None
    logger: Any = None  # its config's `logger` (the tracker a skipped job is sent to)


class Outcome(NamedTuple):
    """What became of a job in this sweep."""

    status: str  # ok, nonfinite, failed, not run, unfinished, interrupted
    error: str | None = None
    tracker_error: str | None = None  # its tracker failed (`rnnjax.app.tracking.failure_line`)


def launch_overrides(job: Job, total: int) -> list[str]:
    """What the launcher gets for a job: its overrides, its directory name (Hydra settings,
    which are kept out of `.hydra/overrides.yaml` and the launcher's log) and its place."""
    return [*job.overrides, f"hydra.sweep.subdir='{job.dir.name}'",
            f"hydra.job.env_set.{POSITION}='{job.number} of {total}'"]


def job_list(sweeper: Any, arguments: Sequence[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's BasicSweeper.sweep builds them: the sweeper's
    `params` (an experiment's `hydra.sweeper.params`) first, the command line after, so that
    the command line wins; then Hydra's own cartesian product (`split_arguments`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    context = getattr(sweeper, "hydra_context", None)
    parser = OverridesParser.create(config_loader=context.config_loader if context else None)
    parsed = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    return [job for batch in sweeper.split_arguments(parsed, None) for job in batch]


def plan_jobs(sweeper: Any, jobs: list[list[str]], first: int = 1,
              total: int | None = None) -> list[Job]:
    """Composes and validates every job (exiting with one line at the first bad one, before
    anything is written) and decides which are finished already (`rnnjax.app.job.finished_summary`,
    with `resume`). The jobs are numbered from `first` of `total` (default: all of them), as a
    search that plans a batch at a time numbers them (`rnnjax.sweeps.search`)."""
    from rnnjax.app.job import finished_summary

    loader = sweeper.hydra_context.config_loader
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    sizes: dict = {}  # token counts of the texts read, for their windows check
    reached: set = set()  # trackers whose server was reached already
    plan = []
    saved = HydraConfig.instance().cfg
    try:
        for number, overrides in enumerate(jobs, first):
            job = Job(number, list(overrides), sweep_dir / job_name(overrides), None)
            try:
                full = loader.load_sweep_config(sweeper.config,
                                                launch_overrides(job, total or len(jobs)))
                HydraConfig.instance().set_config(full)  # as the launcher does for the job
                config, resolved = job_config(task_config(full))
                prepare_data(config, sizes)
            except Exception as e:  # Hydra would only warn, and skip the validation
                fail(f"{error_line(e)} (in job {' '.join(overrides)})")
            check_job_name(full.hydra.job.name)
            if (config.logger.name, config.logger.uri) not in reached:
                check_tracker(config)
                reached.add((config.logger.name, config.logger.uri))
            done = finished_summary(job.dir, resolved) if config.resume else None
            plan.append(job._replace(done=done, logger=config.logger))
    finally:
        HydraConfig.instance().cfg = saved
    return plan


def launched_outcome(job: Job, ret: Any, started: float) -> Outcome:
    """A job's outcome from the JobReturn its launcher gave back (read without Hydra's
    `return_value`, which raises a failed job's error)."""
    from hydra.core.utils import JobStatus

    value = ret._return_value
    if ret.status == JobStatus.COMPLETED and isinstance(value, dict) and "status" in value:
        return Outcome(value["status"], value.get("error"), value.get("tracker_error"))
    if isinstance(value, TaskEnded):
        # Its SLURM task left no result (cancelled, say): the directory tells whether the job
        # finished before the task ended, else the task's end is the error.
        return disk_outcome(job, started, str(value))
    if ret.status == JobStatus.FAILED:
        return Outcome("failed", f"{type(value).__name__}: {value}".splitlines()[0])
    return Outcome("unfinished")


def disk_outcome(job: Job, started: float, launcher_error: str | None) -> Outcome:
    """A launched job's outcome from its directory, when the launcher gave nothing back (it
    was interrupted or raised)."""
    from rnnjax.app.results import FINISHED, SUMMARY, job_status

    status = job_status(job.dir)
    if status in FINISHED:
        return Outcome(status)
    if status == "failed":
        return Outcome(status, read_json(job.dir / SUMMARY).get("error", "?"))
    if launcher_error is not None:  # a SLURM task that ended without a result, say
        return Outcome("failed", launcher_error)
    began = job.dir / ".hydra" / "overrides.yaml"  # Hydra writes it as the job starts
    if began.is_file() and began.stat().st_mtime >= started:
        return Outcome("interrupted")
    return Outcome("unfinished")


def closing_line(sweep: Path, jobs: list[Job], outcomes: dict[int, Outcome]) -> tuple[str, int]:
    """The sweep's closing line and exit code (0; 1 when a job failed, was not run or did not
    finish, or its tracker failed).

    `rnnjax: sweep DIR: 3 jobs: 1 failed, 2 ok (1 skipped: finished earlier); failed:
    seq_len=4 (FloatingPointError: ...)`
    """
    counts: Counter = Counter()
    skipped, problems = 0, []
    for job in jobs:
        outcome = outcomes.get(job.number, Outcome("unfinished"))
        if job.done is not None:
            outcome = Outcome(job.done["status"], None, outcome.tracker_error)
            skipped += 1
        counts[outcome.status] += 1
        what = " ".join(job.overrides) or "(no overrides)"
        if outcome.status not in ("ok", "nonfinite"):
            problems.append((outcome.status, f"{what} ({outcome.error})" if outcome.error
                             else what))
        if outcome.tracker_error:  # the job's results are intact; its tracker got nothing
            problems.append(("tracker failed", f"{what} ({outcome.tracker_error})"))
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    line = f"rnnjax: sweep {sweep}: {len(jobs)} jobs: {', '.join(parts)}"
    if skipped:
        line += f" ({skipped} skipped: finished earlier)"
    for status in sorted({s for s, _ in problems}, key=lambda s: (s == "tracker failed", s)):
        line += f"; {status}: " + "; ".join(p for s, p in problems if s == status)
    return line, int(bool(problems))


def interrupted_line(sweep: Path, jobs: list[Job], outcomes: dict[int, Outcome],
                     note: str = "") -> str:
    """The one line after Ctrl-C: how many jobs finished, which were interrupted, what the
    launcher did about its jobs (`note`: "cancelled its SLURM array 42"), and how to resume."""
    finished = [j for j in jobs if j.done is not None
                or outcomes.get(j.number, Outcome("")).status in ("ok", "nonfinite")]
    stopped = [" ".join(j.overrides) or "(no overrides)" for j in jobs
               if outcomes.get(j.number, Outcome("")).status == "interrupted"]
    failed = sum(outcomes.get(j.number, Outcome("")).status == "failed" for j in jobs)
    skipped = sum(j.done is not None for j in jobs)
    line = f"rnnjax: sweep {sweep} interrupted: {len(finished)} of {len(jobs)} jobs finished"
    if skipped:
        line += f" ({skipped} skipped: finished earlier)"
    if failed:
        line += f", {failed} failed"
    line += f"; interrupted: {'; '.join(stopped) if stopped else 'none'}"
    rest = len(jobs) - len(finished) - len(stopped) - failed
    if rest:
        line += f"; {rest} not started"
    if note:
        line += f"; {note}"
    return line + "; the same command resumes the sweep"


MANIFEST = "sweep.json"  # in a sweep's directory: every job it plans (`write_manifest`)


def write_manifest(sweep_dir: Path, jobs: list[Job]) -> None:
    """Writes `sweep.json`: the sweep's jobs, each with its place, its directory (relative to
    the sweep's) and its overrides, so that a report can tell the jobs that never started."""
    from rnnjax.app.results import write_json

    write_json({"jobs": [{"number": j.number, "dir": j.dir.name, "overrides": j.overrides}
                         for j in jobs]}, sweep_dir / MANIFEST)


def send_skipped(job: Job) -> Outcome:
    """A skipped job's outcome, after sending it to its tracker if it names one."""
    from rnnjax.app.tracking import failure_line, send_and_record, tracker_failure

    summary = send_and_record(job.logger, job.dir, job.done)
    failed = tracker_failure(summary, job.logger)
    return Outcome(job.done["status"], None, failure_line(failed) if failed else None)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
