"""Regenerate every published figure and results/REPORT.md with one command.

    rnnjax reproduce                              # every figure, into ./results
    rnnjax reproduce --only fig3_phase_diagram
    rnnjax reproduce --out /tmp/results
    (python experiments/reproduce.py takes the same arguments)

What each figure runs and draws, its caption and REPORT.md's head are data: conf/figures.yaml
(read by `rnnjax.report.figures`).

Each figure's jobs run into OUT/runs/reproduce/NAME/JOB (JOB named by the job's own overrides,
as a sweep names its jobs) in a worker process (`--workers N`: N at once), whose output goes to
OUT/runs/reproduce/workers.log while the terminal shows a line per job. A job whose directory
already holds a finished run of the same config, code version and data is skipped (rnnjax's
resume, `rnnjax.app.job.finished_summary`): an interrupted reproduction resumes where it stopped,
and a second run only redraws. Each figure goes to OUT/figures/NAME.png as soon as its jobs are
done, with its section of the report in OUT/figures/NAME.md; OUT/REPORT.md is assembled from
every section present.

Nothing stays silent long: the first line says what is about to happen before JAX, Hydra,
pandas or matplotlib load (they are imported where they are used, after it), and each long
phase (planning the jobs, starting the workers, a job that runs long, drawing) has its line.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rnnjax.report.figures import Data, load_figures, report_head, slopes
from rnnjax.sweeps.names import job_name

if TYPE_CHECKING:
    import pandas as pd

    from rnnjax.app.config import Config

RESULTS = Path("results")  # the default --out, relative to the current directory
DPI = 90
PROGRESS_S = 2.0  # planning: a progress line at most this often
HEARTBEAT_S = 10.0  # a job still running after this long gets a line, and again after as long
COMMAND = "rnnjax reproduce"  # what the report tells its reader to run
log = logging.getLogger("reproduce")

FIGURES = load_figures()  # conf/figures.yaml: what each figure runs and draws


class Job(NamedTuple):
    """One job of the reproduction."""

    number: int  # 1..N over the whole reproduction
    figure: str
    overrides: list[str]  # common + its own
    dir: Path
    resolved: dict[str, Any]  # its resolved config (what resume compares)
    cost: float  # a rough estimate of its run time, to start the longest first
    cfg: Config | None = None  # its validated config, which the worker runs as it is


def _cost(cfg) -> float:
    """Work of a job in arbitrary units: the trajectory it scans (the floats of state its cell
    keeps per step and sequence: the registry's `cost`, times `model.layers`) times the passes
    over it."""
    from rnnjax.app.validate import cell_options
    from rnnjax.core.cells import registry  # JAX: loaded by planning anyway

    passes = 1 + 3 * (cfg.train.steps or 0) + (cfg.train.epochs or 0) * 30

    width = registry.cost(cfg.cell.name.value, cell_options(cfg), cfg.hidden_size)
    return passes * cfg.seq_len * cfg.batch_size * cfg.seeds * width * cfg.model.layers


def plan(names: list[str], out: Path,
         progress: Callable[[int], None] | None = None) -> list[Job]:
    """Every job of the figures `names`, with its directory and resolved config (validated,
    and its data on disk: a bad override raises ConfigError, missing data DataError, before
    anything runs).

    Args:
      names: the figures.
      out: the output directory (--out).
      progress: called with the number of jobs planned so far after each one (Hydra composes
        and validates a job in about 0.1 s on a CPU core: seconds for all of them).
    Returns:
      The jobs, numbered from 1 in figure order.
    """
    from hydra import compose, initialize_config_dir

    from rnnjax.app.data import prepare_data
    from rnnjax.sweeps.app import CONF_DIR, job_config

    jobs, sizes = [], {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            fig = FIGURES[name]
            for own in fig.jobs:
                overrides = [*fig.common, *own]
                cfg, resolved = job_config(compose("config", overrides=overrides))
                prepare_data(cfg, sizes)
                jobs.append(Job(len(jobs) + 1, name, overrides,
                                out / "runs" / "reproduce" / name / job_name(own), resolved,
                                _cost(cfg), cfg))
                if progress is not None:
                    progress(len(jobs))
    return jobs


def _init_worker(log_file: str) -> None:
    """A worker's stdout and stderr go to `log_file` (the parent prints the progress lines, so
    workers never interleave on the terminal); float64 is on in every worker, so a job computes
    the same numbers whichever worker runs it."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import jax

    from rnnjax.app.config import register_configs

    jax.config.update("jax_enable_x64", True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")
    register_configs()


def run_one(overrides: list[str], out: str, cfg: Config | None = None,
            resolved: dict[str, Any] | None = None) -> tuple[str, str | None, float]:
    """Runs (or resumes) one job in this process: (status, error, seconds).

    Args:
      overrides: the job's Hydra overrides.
      out: its directory.
      cfg, resolved: its config as `plan` composed it; without them the overrides are
        composed again here (0.1 s or more of Hydra per job).
    """
    from rnnjax.app.job import run_or_resume

    start = time.perf_counter()
    if cfg is None or resolved is None:
        from hydra import compose, initialize_config_dir

        from rnnjax.sweeps.app import CONF_DIR, job_config

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg, resolved = job_config(compose("config", overrides=overrides))
    logging.getLogger("rnnjax").info("%s: %s", out, " ".join(overrides))
    summary = run_or_resume(cfg, out, resolved)
    return summary["status"], summary.get("error"), time.perf_counter() - start


def load(out: Path, figures: list[str], names: dict[str, str]) -> Data | None:
    """The frames of the current jobs of `figures` (not of any other directory a former job
    list left under OUT/runs/reproduce/), one job column over all of them: a job is named by its
    figure and directory, `NAME/JOB`. A job that did not finish is left out with a warning;
    None when none did."""
    import pandas as pd

    from rnnjax.app.results import load_lyapunov, load_metrics, load_summaries, load_sweep

    parts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for figure in figures:
            for own in FIGURES[figure].jobs:
                job = f"{figure}/{job_name(own)}"
                where = out / "runs" / "reproduce" / job
                try:
                    frames_of = (load_sweep(where), load_summaries(where), load_metrics(where),
                                 load_lyapunov(where))
                except FileNotFoundError:
                    warnings.warn(f"{job} did not finish: left out of the figure", stacklevel=1)
                    continue
                # "." is the job itself; ".[init.gain=0.5]" one value of a list of them
                parts.append(tuple(None if f is None else f.assign(
                    job=job + f["job"].astype(str).str.removeprefix(".")) for f in frames_of))
    for message in dict.fromkeys(str(w.message) for w in caught):
        log.warning("%s", message)
    if not parts:
        return None
    def joined(i: int) -> pd.DataFrame | None:
        frames_i = [p[i] for p in parts if p[i] is not None]
        return pd.concat(frames_i, ignore_index=True) if frames_i else None

    return Data(joined(0), joined(1), joined(2), names, joined(3))


def write_section(name: str, out: Path) -> Path | None:
    """Draws figure `name` from its jobs' and its sources' directories and writes its report
    section (OUT/figures/NAME.md); returns the PNG's path, or None (nothing written) when none
    of those jobs finished."""
    from rnnjax.report import frames

    fig = FIGURES[name]
    sources = [n for n in fig.sources if n != name] + ([name] if fig.jobs else [])
    names = {f"{name}/{job_name(fig.jobs[i])}": text for i, text in fig.names.items()}
    data = load(out, sources, names)
    if data is None:  # every job failed: their lines said so
        return None
    hidden = {f"{name}/{job_name(fig.jobs[i])}" for i in fig.table_only}

    def drawn(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        return None if frame is None else frame[~frame["job"].isin(hidden)]

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    png = figures / f"{name}.png"
    # a pyplot-free Figure: nothing to close
    fig.draw(Data(drawn(data.df), drawn(data.summaries), drawn(data.metrics), names,
                  drawn(data.lyapunov))).savefig(
        png, dpi=DPI, bbox_inches="tight")
    tables = (fig.tables or slopes)(data)
    parts = [f"## {name}\n", f"![{name}](figures/{name}.png)\n", fig.caption + "\n"]
    for heading, table in tables:
        parts += [f"{heading}:\n", frames.markdown_table(table) + "\n"]
    parts.append(f"Made by `{COMMAND} --only {name}`.\n")
    (figures / f"{name}.md").write_text("\n".join(parts))
    return png


def write_report(out: Path, how: str) -> None:
    """OUT/REPORT.md from every figure section present, in figure order; `how` says how this
    run went (its time, the jobs it ran and reused, the machine's load)."""
    parts = report_head(COMMAND, how)
    for name in FIGURES:
        section = out / "figures" / f"{name}.md"
        if section.is_file():
            parts.append(section.read_text())
    (out / "REPORT.md").write_text("\n".join(parts))


def _load() -> str:
    """The machine's 1-minute load average and its CPU count, in words."""
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    return f"1-minute load average {load} on {os.cpu_count()} CPU cores"


def _every(seconds: float) -> Callable[[], bool]:
    """A clock that says True at most once every `seconds` (from now): when a progress line is
    due."""
    last = time.perf_counter()

    def due() -> bool:
        nonlocal last
        now = time.perf_counter()
        if now - last < seconds:
            return False
        last = now
        return True

    return due


def _plan_with_progress(names: list[str], out: Path) -> tuple[list[Job], list[Job]]:
    """`plan` and the resume check of every job, with a line at once and one every PROGRESS_S
    seconds while they take; returns (every job, the jobs to run)."""
    from rnnjax.app.job import finished_summary

    total = sum(len(FIGURES[n].jobs) for n in names)
    log.info("planning: composing and validating %d job configs with Hydra ...", total)
    due = _every(PROGRESS_S)

    def planned(done: int) -> None:
        if due():
            log.info("planning: %d of %d jobs composed and validated", done, total)

    jobs = plan([n for n in names if FIGURES[n].jobs], out, planned)
    todo = []
    for job in jobs:
        if finished_summary(job.dir, job.resolved) is not None:
            log.info("job %d of %d (%s/%s): skipped, finished earlier", job.number, len(jobs),
                     job.figure, job.dir.name)
        else:
            todo.append(job)
            if due():
                log.info("planning: checked %d of %d jobs for a finished run", job.number,
                         len(jobs))
    return jobs, todo


def _run_jobs(todo: list[Job], total: int, out: Path, workers: int,
              finished: Callable[[Job, str], None]) -> None:
    """Runs the jobs `todo` in `workers` worker processes, the longest first when there are
    several workers (so that none is left with a long job at the end), else in figure order
    (so that each figure is drawn as soon as it can be). `finished(job, status)` follows each
    job's line. A job running longer than HEARTBEAT_S gets a line every HEARTBEAT_S."""
    worker_log = out / "runs" / "reproduce" / "workers.log"
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting %d worker process%s (each imports JAX before its first job; their "
             "output: %s)", workers, "es" * (workers > 1), worker_log)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, _init_worker, (str(worker_log),)) as pool:
        order = sorted(todo, key=lambda j: -j.cost) if workers > 1 else todo
        running: dict[Future, Job] = {
            pool.submit(run_one, job.overrides, str(job.dir), job.cfg, job.resolved): job
            for job in order}
        # The pool hands jobs to its workers in the order submitted: the first `workers` start
        # now, and each one that ends starts the next.
        queue = list(running)
        started = {f: time.perf_counter() for f in queue[:workers]}
        told = dict.fromkeys(started, 0.0)  # when each running job's last line was printed
        while running:
            done, _ = wait(running, timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for future in [f for f in queue if f in started]:
                if future not in done and now - max(started[future], told[future]) >= HEARTBEAT_S:
                    job, told[future] = running[future], now
                    log.info("job %d of %d (%s/%s): running, %.0f s so far", job.number, total,
                             job.figure, job.dir.name, now - started[future])
            for future in [f for f in queue if f in done]:  # in the order they started
                job = running.pop(future)
                try:
                    status, error, seconds = future.result()
                except Exception as e:  # noqa: BLE001 - outside run_or_resume: one job fails
                    status, error, seconds = "failed", f"{type(e).__name__}: {e}", 0.0
                    error = error.splitlines()[0]
                log.info("job %d of %d (%s/%s): %s in %.1f s%s", job.number, total,
                         job.figure, job.dir.name, status, seconds, f": {error}" if error else "")
                queue.remove(future)
                started.pop(future, None)
                told.pop(future, None)
                waiting = [f for f in queue if f not in started]
                if waiting:
                    started[waiting[0]], told[waiting[0]] = now, 0.0
                finished(job, status)


# --workers' default: a job keeps about 1.4 of 2 CPU cores busy (compiling, small programs),
# so two at once took 0.73 of the time of one at a time (fig7 and fig8, cold cache, 2 cores).
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))


def run(names: list[str], out: Path, workers: int) -> tuple[int, int, int]:
    """Runs the jobs of the figures `names` (`workers` at a time, finished ones skipped) and
    draws each figure once its jobs are done; returns (jobs, jobs run, jobs failed)."""
    jobs, todo = _plan_with_progress(names, out)
    total = len(jobs)
    pending = {n: {j.number for j in todo if j.figure == n} for n in names}
    waits = {n: [s for s in FIGURES[n].sources if s in names] for n in names}
    drawn: set[str] = set()
    failed = 0

    def draw_ready() -> None:
        for n in names:
            if n not in drawn and not pending[n] and not any(pending[s] for s in waits[n]):
                log.info("%s: drawing ...", n)
                start = time.perf_counter()
                png = write_section(n, out)
                drawn.add(n)
                if png is None:
                    log.warning("%s: not drawn, none of its jobs finished", n)
                else:
                    log.info("%s drawn: %s (%.1f s)", n, png, time.perf_counter() - start)

    def finished(job: Job, status: str) -> None:
        nonlocal failed
        failed += status == "failed"
        pending[job.figure].discard(job.number)
        draw_ready()

    log.info("%d jobs: %d finished earlier, %d to run (worker output: %s)", total,
             total - len(todo), len(todo), out / "runs" / "reproduce" / "workers.log")
    draw_ready()
    if todo:
        _run_jobs(todo, total, out, workers, finished)
    draw_ready()
    return total, len(todo), failed


def out_problem(out: Path) -> str | None:
    """What is wrong with --out, in one line (None: nothing): a file where a directory must be,
    or a directory that cannot be written, where the figures, REPORT.md or the jobs go. Checked
    before any job runs; nothing is written."""
    from rnnjax.app.results import unwritable  # pandas: not before the first line is out

    for where in (out, out / "figures", out / "runs" / "reproduce"):
        problem = unwritable(where, directory=True)
        if problem:
            return f"--out {out}: {problem}"
    return None


def make_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Figures: " + ", ".join(FIGURES))
    parser.add_argument("--only", choices=list(FIGURES), action="append",
                        help="this figure only (repeatable); its sources' jobs run too")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="DIR",
                        help="where runs/reproduce/, figures/ and REPORT.md go (default: "
                             "./results)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help="jobs run at once, each in its own process (default: "
                             f"{DEFAULT_WORKERS}, the CPU cores up to 2: on 2 cores, fig7's and "
                             "fig8's 30 jobs took 108 s with 2, 147 s with 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`rnnjax reproduce`: every published figure (or those of --only) and REPORT.md.

    Args:
      argv: the arguments (default: sys.argv[1:]).
    Returns:
      0; 1 when a job failed; 2 for bad input (--workers, --out, an override, missing data:
      one line, before any job runs).
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers={args.workers} is invalid: must be an integer >= 1")
    problem = out_problem(args.out)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)  # the progress lines, wherever the root logger points
    # Workers that share an accelerator must not each preallocate 75% of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    wanted = set(args.only or FIGURES)
    wanted |= {s for n in wanted for s in FIGURES[n].sources}
    names = [n for n in FIGURES if n in wanted]  # a figure after its sources
    which = ", ".join(names) if args.only else "every figure"
    log.info("reproducing %s: %d figure%s, %d jobs, into %s (figures/, REPORT.md; the jobs in "
             "runs/reproduce/)", which, len(names), "s" * (len(names) > 1),
             sum(len(FIGURES[n].jobs) for n in names), args.out)
    from rnnjax.app.config import register_configs  # JAX and Hydra: seconds
    from rnnjax.app.validate import ConfigError
    from rnnjax.core.tasks import DataError

    register_configs()
    start, before = time.perf_counter(), _load()
    try:
        total, ran, failed = run(names, args.out, args.workers)
    except (ConfigError, DataError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    write_report(args.out, f"This report's last run took {seconds // 60:.0f} min "
                           f"{seconds % 60:.0f} s for {which}: "
                           f"{ran} of its {total} jobs ran ({total - ran} finished earlier and "
                           f"were reused), {args.workers} at a time; {before} at its start, "
                           f"{_load()} at its end.")
    log.info("%s written; total %.0f s%s", args.out / "REPORT.md", seconds,
             f"; {failed} job(s) failed (see their summary.json)" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
