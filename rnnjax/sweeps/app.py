"""Runs and sweeps from the command line: Hydra's app, job lists, directory names, resume
decisions and the closing line.

`main(argv)` is the command line (`rnnjax run`, experiments/run.py). A single run goes to
`results/runs/single/<job name>`, a sweep to `results/runs/multirun/<sweep name>/<job name>`,
both named by their overrides (`job_name`, `sweep_name`), so that the same command maps to the
same directories and resumes. The sweeper (`hydra_plugins.rnnjax_sweeper`, selected in
conf/config.yaml) calls `run_sweep`: it builds the job list with Hydra's BasicSweeper, validates
every job before launching any, skips finished jobs without launching them, and ends with one
closing line (`closing_line`) whatever the launcher raised.
"""

import copy
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rnnjax.app.config import (
    Config,
    ConfigError,
    _omegaconf_message,
    not_a_key,
    prepare_data,
    register_configs,
    validate,
)
from rnnjax.app.interrupt import INTERRUPTED, catching_ctrl_c, held, stop_if_interrupted
from rnnjax.app.trackers import needs_package
from rnnjax.core.tasks import DataError
from rnnjax.sweeps.slurm import TaskEnded, unsatisfiable

log = logging.getLogger("rnnjax")

# The one place that says where the app's configs are: conf/ at the repository root in a
# checkout (and an editable install), shipped as rnnjax/conf/ inside an installed package.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rnnjax/
CONF_DIR = next((d for d in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf")
                 if (d / "config.yaml").is_file()), _PACKAGE_DIR.parent / "conf")
CONFIG_NAME = "config"
SWEEP_ROOT = "results/runs/multirun"  # a sweep: SWEEP_ROOT/<sweep_name>/<job_name>
RUN_ROOT = "results/runs/single"  # a single run: RUN_ROOT/<job_name>
POSITION = "RNNJAX_JOB"  # hydra.job.env_set key: "i of N", set by the sweeper for each job
_NAME_MAX = 120  # characters of a directory name (file systems allow 255 bytes)


# --------------------------------------------------------------------------- directory names


def _is_setting(override: str) -> bool:
    """Hydra's own settings (`hydra.*`, `hydra/launcher=...`), `resume` and the experiment
    tracker (`logger=...`, `logger.*`) change no result, so they do not name directories: a
    finished job re-run with a tracker maps to its old directory, is skipped, and its results
    are sent to the tracker (`rnnjax.app.tracking`)."""
    return (bool(re.match(r"^[+~]*(hydra[./]|resume=|logger[.=])", override))
            or override.startswith("-"))


def safe_name(text: str, key: str) -> str:
    """`text` as one directory name: letters, digits and `_.,=+-` only (others become `_`), no
    leading `.` (so never `.` or `..`), at most 120 characters.

    A name that had to be changed or cut ends with `-` and 12 hex digits of the sha1 of `key`,
    so that different overrides never share a directory and the same ones always get it.
    """
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
    name = re.sub(r"^\.", "_", name) or "default"
    if name != (text or "default") or len(name) > _NAME_MAX:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        name = f"{name[:_NAME_MAX - 13]}-{digest}"
    return name


def sweep_name(overrides: Sequence[str]) -> str:
    """A directory name for a sweep from its command-line overrides, the same whatever their
    order: `activation=tanh,relu seq_len=16` -> `activation=tanh,relu__seq_len=16`.

    Hydra's own settings (`hydra.*`, `hydra/launcher=...`) and `resume` are left out, so a
    sweep interrupted under one launcher resumes under another. See `safe_name` for the
    characters kept and the bound on the length.
    """
    keep = sorted(o for o in overrides if not _is_setting(o))
    return safe_name("__".join(keep), "\0".join(keep))


def job_name(overrides: Sequence[str]) -> str:
    """A directory name for one job (of a sweep, or a single run) from its overrides, the same
    whatever their order: `seq_len=16 activation=tanh` -> `activation=tanh,seq_len=16`
    (Hydra's `override_dirname`), `default` without overrides.

    Settings and `resume` are left out (see `sweep_name`); a value with a path separator or
    another character outside `safe_name`'s set, or a name over 120 characters, gets a hash,
    so that `task.path=../../x.txt` stays inside the sweep directory.
    """
    keep = sorted(o for o in overrides if not _is_setting(o))
    return safe_name(",".join(keep), "\0".join(keep))


def _overrides(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def _multirun(argv: Sequence[str]) -> bool:
    return bool({"-m", "--multirun"} & set(argv))


def sweep_dir_override(argv: Sequence[str]) -> list[str]:
    """The `hydra.sweep.dir=...` override naming a multirun by its overrides (see `sweep_name`),
    so that re-running an interrupted sweep's command maps every job to its old directory;
    none when not a multirun or when the command sets hydra.sweep.dir itself."""
    if not _multirun(argv) or any(a.startswith("hydra.sweep.dir=") for a in argv):
        return []
    return [f"hydra.sweep.dir='{SWEEP_ROOT}/{sweep_name(_overrides(argv))}'"]


def run_dir_override(argv: Sequence[str]) -> list[str]:
    """The `hydra.run.dir=...` override naming a single run by its overrides (`job_name`), so
    that two runs of different configs never share a directory and re-running a command
    resumes it; none for a multirun or when the command sets hydra.run.dir itself."""
    if _multirun(argv) or any(a.startswith("hydra.run.dir=") for a in argv):
        return []
    return [f"hydra.run.dir='{RUN_ROOT}/{job_name(_overrides(argv))}'"]


# --------------------------------------------------------------------------- validation


def _fail(message: str) -> None:
    # One line and a non-zero exit, before Hydra writes anything. SystemExit passes through
    # Hydra's error reporting, which would otherwise add a traceback and a hint.
    print(f"rnnjax: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# What a launcher preset needs beyond rnnjax's own dependencies: (module, package, extra).
LAUNCHER_PACKAGES = {
    **dict.fromkeys(("local_parallel", "joblib"),
                    ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "parallel")),
    **dict.fromkeys(("slurm", "submitit_slurm", "submitit_local"),
                    ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm")),
}


def check_group_options(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Exits with a one-line error when a config group is given a value that is not one of its
    options (`activation=foo`, `activation=null`, `task=5`), which Hydra would report in several
    lines or with a traceback, a launcher preset whose package is not installed, or a deletion
    (`~seq_len`)."""
    from importlib.util import find_spec

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob

    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml"))
              for p in Path(conf_dir).iterdir() if p.is_dir()}
    try:
        parsed = OverridesParser.create().parse_overrides(_overrides(argv))
    except HydraException:
        return  # Hydra reports its own syntax errors
    for o in parsed:
        if o.is_delete():
            if not o.key_or_group.startswith("hydra"):
                # Deleting a key the schema has ran the job with a config whose summary lacks
                # the key, in the directory of another run.
                _fail(f"{o.input_line} is not supported: rnnjax's config keys cannot be "
                      f"deleted; set {o.key_or_group}=VALUE instead")
            continue
        value = o.value()
        if o.key_or_group == "hydra/launcher" and isinstance(value, str) \
                and value in LAUNCHER_PACKAGES:
            module, package, extra = LAUNCHER_PACKAGES[value]
            if find_spec(module) is None:
                _fail(needs_package(f"hydra/launcher={value}", package, extra))
        if o.key_or_group not in groups:
            continue
        allowed = groups[o.key_or_group]
        given = o.input_line or o.key_or_group
        if isinstance(value, Glob):
            if not value.filter(allowed):
                _fail(f"{given} matches no option of {o.key_or_group}; allowed: "
                      f"{', '.join(allowed)}")
            continue
        items = value.list if isinstance(value, ChoiceSweep) else [value]
        if not all(isinstance(v, str) for v in items):
            _fail(f"{given} is invalid: {o.key_or_group} takes option names; allowed: "
                  f"{', '.join(allowed)}")
        unknown = [v for v in items if v not in allowed]
        if unknown:
            _fail(f"{o.key_or_group}={unknown[0]} is not an option; allowed: "
                  f"{', '.join(allowed)}")


def job_config(cfg: DictConfig) -> tuple[Config, dict[str, Any]]:
    """A job's validated config and its resolved form (what summary.json records and resume
    compares), from the config Hydra gives the task function (without `hydra`)."""
    return validate(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _error_line(e: BaseException) -> str:
    """One message for whatever composing or validating a job raised."""
    if isinstance(e, ConfigError | DataError):
        return str(e)
    if isinstance(e, OmegaConfBaseException):  # e.g. an interpolation that does not resolve
        return _omegaconf_message(e)
    if isinstance(e, HydraException):  # composing failed: an unknown key, a wrong type
        cause = e.__cause__
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) \
                and is_dataclass(getattr(cause, "object_type", None)):
            return not_a_key(cause.full_key, cause.object_type)
        if isinstance(cause, OmegaConfBaseException):
            return _omegaconf_message(cause)
        if isinstance(e, OverrideParseException):
            return f"cannot parse {e.override}: {e.message.splitlines()[0]}"
        # Hydra's own message, on one line, without its search path and links.
        lines = [ln.strip() for ln in str(e).split("Config search path:")[0].splitlines()]
        return "; ".join(ln for ln in lines if ln and not ln.startswith("See http"))
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def check_job_name(name: Any) -> None:
    """Exits with one line when `hydra.job.name`, which names the job's log file
    (NAME.log in its directory), would put it elsewhere: a path separator or `..`."""
    text = str(name)
    if "/" in text or "\\" in text or ".." in text or not text.strip():
        _fail(f"hydra.job.name={text} is invalid: it names the job's log file ({text}.log in "
              "the job's directory); allowed: a name without '/', '\\' or '..'")


def check_tracker(config: Config) -> None:
    """Exits with one line, within seconds, when the tracker's server cannot be reached, before
    any compute (`rnnjax.app.trackers.check_reachable`)."""
    from rnnjax.app.trackers import TrackerError, check_reachable

    try:
        check_reachable(config.logger.name.value, vars(config.logger))
    except TrackerError as e:
        _fail(str(e))


def check_writable(directory: Path) -> None:
    """Exits with one line naming `directory` when a job cannot write there (read-only, a full
    disk, a file in the way), before Hydra writes its first file into it."""
    from rnnjax.app.results import unwritable

    problem = unwritable(directory, directory=True)
    if problem:
        _fail(f"hydra.run.dir={directory}: {problem}")


def _os_error_line(e: OSError, path: Any = None) -> str:
    """One line naming the path an OSError is about and what is wrong with it."""
    where = e.filename if e.filename is not None else path
    return f"cannot write {where}: {e.strerror or e}"


def _task_config(config: DictConfig) -> DictConfig:
    """The config a Hydra job's task function gets: the full config without `hydra`."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


class ValidateConfig(Callback):
    """Hydra callback: validates a single run's config (and fetches its data), skips it when
    its directory holds a finished run of it, and checks that its directory can be written,
    all before Hydra creates or writes into that directory: bad input writes nothing, and a
    finished run is never touched (its directory may be read-only). A sweep's jobs are
    validated by the sweeper (`run_sweep`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            checked = validate(config)
            prepare_data(checked)
        except (ConfigError, DataError, OmegaConfBaseException) as e:
            _fail(_error_line(e))
        check_job_name(config.hydra.job.name)
        out = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        if checked.resume:
            _skip_if_finished(checked, _task_config(config), out)
        check_tracker(checked)
        check_writable(out)


def _skip_if_finished(config: Config, cfg: DictConfig, out: Path) -> None:
    """Ends a single run whose directory holds a finished run of its config: says so, sends
    it to the config's tracker if one is named, and exits (0; 1 when the tracker failed)."""
    from rnnjax.app.job import finished_summary
    from rnnjax.app.tracking import failure_line, send_and_record, tracker_failure

    # Quietly: where the directory holds no finished run of this config, the job itself says
    # why it runs again (into run.log too), and once.
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        summary = finished_summary(out, job_config(cfg)[1]) if out.is_dir() else None
    finally:
        log.setLevel(level)
    if summary is None:
        return
    with _console_log():
        log.info("skipped: %s already holds a finished run of this config (status %s; "
                 "resume=false runs it again)", out, summary["status"])
        summary = send_and_record(config.logger, out, summary)
    failed = tracker_failure(summary, config.logger)
    _finish_single(out, summary["status"], failure_line(failed, out) if failed else None)


@contextmanager
def _console_log() -> Iterator[None]:
    """rnnjax's log lines on the console as `rnnjax: ...` while Hydra has not configured the
    job's logging (a single run that is skipped never gets that far)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rnnjax: %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _finish_single(out: Path, status: str, tracker_error: str | None) -> None:
    """A single run's last lines (where its results are, and how to open them) and its exit:
    0, or 1 with one more line when its tracker failed."""
    print("\n".join([f"rnnjax: run {out}: {status}", *open_lines(out)]), file=sys.stderr)
    if tracker_error:
        print(f"rnnjax: error: {tracker_error}", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(0)


# --------------------------------------------------------------------------- the job


_running: dict[str, str] = {}  # the output directory of the job this process runs now


def _start_backends() -> None:
    """Starts JAX's backends (once per process) with Ctrl-C held until they are up:
    interrupted there, JAX leaves a timer thread behind that keeps the process from exiting
    for 60 s and then warns of a slow TPU."""
    import jax

    with held():
        jax.devices()


class _Position(logging.Filter):
    """Prefixes the job's log lines with its place in the sweep ("job 3 of 6: ...")."""

    def __init__(self, position: str) -> None:
        super().__init__()
        self.prefix = f"job {position}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


@contextmanager
def _log_position(position: str | None) -> Iterator[None]:
    if not position:
        yield
        return
    tag = _Position(position)
    log.addFilter(tag)
    try:
        yield
    finally:
        log.removeFilter(tag)


def task(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task function: runs one job (or skips it when finished, see
    `rnnjax.app.job.run_or_resume`) in Hydra's output directory.

    Returns:
      {"status": ..., "error": ...}: "ok", "nonfinite", "failed" or "not run" (another process
      holds the job's directory). A single run that fails, or finds its directory held, exits
      1 with one line instead.
    """
    from rnnjax.app.job import JobBusy, run_or_resume
    from rnnjax.app.tracking import failure_line, tracker_failure

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    out = hc.runtime.output_dir
    stop_if_interrupted()
    _running["dir"] = out
    _start_backends()
    config, resolved = job_config(cfg)
    with _log_position(None if single else hc.job.env_set.get(POSITION)):
        if not single:
            log.info("%s in %s", " ".join(hc.overrides.task) or "(no overrides)", out)
        try:
            summary = run_or_resume(config, out, resolved=resolved)
        except JobBusy as e:
            if single:
                print(f"rnnjax: error: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            log.error("not run: %s", e)
            return {"status": "not run", "error": str(e)}
    _running.pop("dir", None)
    failed = tracker_failure(summary, config.logger)
    tracker_error = failure_line(failed, None if not single else out) if failed else None
    if single:
        if summary["status"] == "failed":
            # In a sweep the other jobs go on and the closing line lists the failures.
            print(f"rnnjax: error: the job failed: {summary['error']}", file=sys.stderr)
            raise SystemExit(1)
        if tracker_error:
            _finish_single(Path(out), summary["status"], tracker_error)
        print("\n".join([f"rnnjax: run {out}: {summary['status']}", *open_lines(Path(out))]),
              file=sys.stderr)
    return {"status": summary["status"], "error": summary.get("error"),
            "tracker_error": tracker_error}


# --------------------------------------------------------------------------- the sweep


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


def plan_jobs(sweeper: Any, jobs: list[list[str]]) -> list[Job]:
    """Composes and validates every job (exiting with one line at the first bad one, before
    anything is written) and decides which are finished already (`rnnjax.app.job.finished_summary`,
    with `resume`)."""
    from rnnjax.app.job import finished_summary

    loader = sweeper.hydra_context.config_loader
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    sizes: dict = {}  # token counts of the texts read, for their windows check
    reached: set = set()  # trackers whose server was reached already
    plan = []
    saved = HydraConfig.instance().cfg
    try:
        for number, overrides in enumerate(jobs, 1):
            job = Job(number, list(overrides), sweep_dir / job_name(overrides), None)
            try:
                full = loader.load_sweep_config(sweeper.config, launch_overrides(job, len(jobs)))
                HydraConfig.instance().set_config(full)  # as the launcher does for the job
                config, resolved = job_config(_task_config(full))
                prepare_data(config, sizes)
            except Exception as e:  # Hydra would only warn, and skip the validation
                _fail(f"{_error_line(e)} (in job {' '.join(overrides)})")
            check_job_name(full.hydra.job.name)
            if (config.logger.name, config.logger.uri) not in reached:
                check_tracker(config)
                reached.add((config.logger.name, config.logger.uri))
            done = finished_summary(job.dir, resolved) if config.resume else None
            plan.append(job._replace(done=done, logger=config.logger))
    finally:
        HydraConfig.instance().cfg = saved
    return plan


def _launched_outcome(job: Job, ret: Any, started: float) -> Outcome:
    """A job's outcome from the JobReturn its launcher gave back (read without Hydra's
    `return_value`, which raises a failed job's error)."""
    from hydra.core.utils import JobStatus

    value = ret._return_value
    if ret.status == JobStatus.COMPLETED and isinstance(value, dict) and "status" in value:
        return Outcome(value["status"], value.get("error"), value.get("tracker_error"))
    if isinstance(value, TaskEnded):
        # Its SLURM task left no result (cancelled, say): the directory tells whether the job
        # finished before the task ended, else the task's end is the error.
        return _disk_outcome(job, started, str(value))
    if ret.status == JobStatus.FAILED:
        return Outcome("failed", f"{type(value).__name__}: {value}".splitlines()[0])
    return Outcome("unfinished")


def _disk_outcome(job: Job, started: float, launcher_error: str | None) -> Outcome:
    """A launched job's outcome from its directory, when the launcher gave nothing back (it
    was interrupted or raised)."""
    from rnnjax.app.results import FINISHED, SUMMARY, job_status

    status = job_status(job.dir)
    if status in FINISHED:
        return Outcome(status)
    if status == "failed":
        return Outcome(status, _read_json(job.dir / SUMMARY).get("error", "?"))
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


def open_lines(path: Path) -> list[str]:
    """The commands that open a sweep's (or run's) results."""
    shell, py = shlex.quote(str(path)), json.dumps(str(path))
    return [f"rnnjax: report: rnnjax report {shell}",
            f"rnnjax: in Python: rnnjax.load_sweep({py})"]


def job_list(sweeper: Any, arguments: Sequence[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's BasicSweeper.sweep builds them: the sweeper's
    `params` (an experiment's `hydra.sweeper.params`) first, the command line after, so that
    the command line wins; then Hydra's own cartesian product (`split_arguments`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    context = getattr(sweeper, "hydra_context", None)
    parser = OverridesParser.create(config_loader=context.config_loader if context else None)
    parsed = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    return [job for batch in sweeper.split_arguments(parsed, None) for job in batch]


def run_sweep(sweeper: Any, arguments: Sequence[str]) -> list:
    """What the rnnjax sweeper does (see the module's docstring).

    Returns:
      The launchers' JobReturns, in batches, as Hydra's BasicSweeper.
    Raises:
      SystemExit: 2 on bad input (nothing written), 1 when a job failed or was not run, 130
        when interrupted.
    """
    with _composed_once(sweeper.hydra_context.config_loader):
        return _run_sweep(sweeper, arguments)


@contextmanager
def _composed_once(loader: Any) -> Iterator[None]:
    """Within it, `loader.load_sweep_config` composes each job's config once: the sweeper
    composes every job to validate it, and the basic launcher, which runs the jobs in this
    process, gets a copy of the same config instead of composing it again (a tenth of a second
    a job). Launchers that run jobs in other processes compose there, as before."""
    compose = loader.load_sweep_config
    composed: dict[tuple[str, ...], DictConfig] = {}

    def once(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if key not in composed:
            composed[key] = compose(master_config, list(sweep_overrides))
        return copy.deepcopy(composed[key])

    loader.load_sweep_config = once
    try:
        yield
    finally:
        del loader.load_sweep_config  # the class's method again


def _run_sweep(sweeper: Any, arguments: Sequence[str]) -> list:
    """`run_sweep`'s work."""
    started = time.time()
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    jobs = plan_jobs(sweeper, job_list(sweeper, arguments))
    error = unsatisfiable(sweeper.config.hydra.launcher)  # a SLURM request no node can run
    if error:
        _fail(error)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")
        write_manifest(sweep_dir, jobs)
    except OSError as e:
        _fail(_os_error_line(e, sweep_dir))
    outcomes: dict[int, Outcome] = {}
    for job in jobs:
        if job.done is not None:
            log.info("job %d of %d skipped: %s holds a finished run of this config (status %s; "
                     "resume=false runs it again)", job.number, len(jobs), job.dir,
                     job.done["status"])
            outcomes[job.number] = _send_skipped(job)
    todo = [job for job in jobs if job.done is None]
    size = sweeper.max_batch_size or len(todo) or 1
    returns, launcher_error, interrupted = [], None, None
    try:
        for begin in range(0, len(todo), size):
            batch = todo[begin:begin + size]
            rets = sweeper.launcher.launch([launch_overrides(j, len(jobs)) for j in batch],
                                           initial_job_idx=begin)
            returns.append(rets)
            outcomes.update({j.number: _launched_outcome(j, r, started)
                             for j, r in zip(batch, rets, strict=True)})
            stop_if_interrupted()
    except KeyboardInterrupt as e:  # its text: what the launcher did about its jobs, if any
        interrupted = str(e)
    except Exception as e:  # e.g. submitit's UncompletedJobError for a cancelled SLURM task
        launcher_error = f"{type(e).__name__}: {e}".splitlines()[0]
    for job in todo:
        if job.number not in outcomes:
            outcomes[job.number] = _disk_outcome(job, started, launcher_error)
    if interrupted is not None:
        print(interrupted_line(sweep_dir, jobs, outcomes, interrupted), file=sys.stderr)
        raise SystemExit(INTERRUPTED)
    line, code = closing_line(sweep_dir, jobs, outcomes)
    print("\n".join([line, *open_lines(sweep_dir)]), file=sys.stderr)
    if code:
        raise SystemExit(code)
    return returns


MANIFEST = "sweep.json"  # in a sweep's directory: every job it plans (`write_manifest`)


def write_manifest(sweep_dir: Path, jobs: list[Job]) -> None:
    """Writes `sweep.json`: the sweep's jobs, each with its place, its directory (relative to
    the sweep's) and its overrides, so that a report can tell the jobs that never started."""
    from rnnjax.app.results import write_json

    write_json({"jobs": [{"number": j.number, "dir": j.dir.name, "overrides": j.overrides}
                         for j in jobs]}, sweep_dir / MANIFEST)


def _send_skipped(job: Job) -> Outcome:
    """A skipped job's outcome, after sending it to its tracker if it names one."""
    from rnnjax.app.tracking import failure_line, send_and_record, tracker_failure

    summary = send_and_record(job.logger, job.dir, job.done)
    failed = tracker_failure(summary, job.logger)
    return Outcome(job.done["status"], None, failure_line(failed) if failed else None)


def register_sweeper() -> type:
    """Registers rnnjax's sweeper with Hydra, and its SLURM launcher where
    hydra-submitit-launcher is installed, and returns the sweeper's class.

    Hydra finds plugins by walking the `hydra_plugins` package's directories, which misses a
    package installed in editable mode (`pip install -e .`: setuptools serves it through an
    import hook, not a directory); registering it by hand works for every install.
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-imports the modules it walks
    from hydra_plugins.rnnjax_sweeper import slurm_launcher
    from hydra_plugins.rnnjax_sweeper.rnnjax_sweeper import RnnjaxSweeper

    plugins.register(RnnjaxSweeper)
    if slurm_launcher.submitit_launcher is not None:
        plugins.register(slurm_launcher.SlurmLauncher)
    return RnnjaxSweeper


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- the command line


def _mode_is_default(argv: Sequence[str]) -> bool:
    """Whether `hydra.mode` is surely unset for this command: rnnjax's configs never set it, so
    only the command line (`hydra.mode=...`) or an experiment file (`+experiment=...`, which a
    user may write) can."""
    return not any(o.lstrip("+~").startswith(("hydra.mode", "experiment")) for o in argv)


@contextmanager
def _hydra_mode_unset(known: bool) -> Iterator[None]:
    """Within it, where `known`, Hydra takes `hydra.mode` as unset without composing the whole
    config a first time only to read it (`Hydra.get_mode`: a tenth of a second or more, once
    per command; `-m` still makes a multirun)."""
    if not known:
        yield
        return
    from hydra._internal.hydra import Hydra

    get_mode = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = get_mode


def main(argv: Sequence[str] | None = None, prog: str = "experiments/run.py") -> None:
    """The command line: `prog [--help] [-m] [KEY=VALUE ...]`, Hydra's app.

    Args:
      argv: the arguments after the program name (default: sys.argv[1:]).
      prog: the program name Hydra's help shows.
    Raises:
      SystemExit: the exit code (0 when all went well; see `run_sweep` and `task`).
    """
    import hydra

    # Jobs that share a GPU (joblib processes, SLURM jobs on one node) must not each
    # preallocate 75% of its memory; set before JAX starts its backend.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    check_group_options(argv, CONF_DIR)
    register_configs()
    register_sweeper()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR),
                     config_name=CONFIG_NAME)(task)
    # The directory overrides go right after the command's own (or first, without any), where
    # Hydra's parser takes overrides: after `--cfg hydra` or `--info` they would not parse.
    at = 1 + max((i for i, a in enumerate(argv) if a in _overrides(argv)), default=-1)
    saved = sys.argv
    sys.argv = [prog, *argv[:at], *sweep_dir_override(argv), *run_dir_override(argv),
                *argv[at:]]
    _running.clear()
    mode_known = _mode_is_default(argv)
    # Hydra prints its errors (an unknown key, a wrong type) in several lines unless
    # HYDRA_FULL_ERROR is set; then it raises them, and they become one line here.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with catching_ctrl_c(), _hydra_mode_unset(mode_known):
            stop_if_interrupted()  # pressed while the modules loaded (`rnnjax run`)
            app()
    except (HydraException, OmegaConfBaseException) as e:
        if full_error == "1":
            raise
        _fail(_error_line(e))
    except BrokenPipeError:  # a closed stdout (`| head`): rnnjax.cli ends quietly
        raise
    except OSError as e:  # Hydra writing a job's .hydra/ or log file: a full disk, say
        if full_error == "1":
            raise
        _fail(_os_error_line(e))
    except KeyboardInterrupt:
        where = _running.get("dir")
        print(f"rnnjax: interrupted: the job in {where} did not finish; the same command "
              "resumes it" if where else "rnnjax: interrupted before any job started",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
