"""Figures and a markdown report of a run or sweep: `rnnjax report PATH [--out DIR]`.

Writes heatmap.png, decay_curves.png, phase_diagram.png (when the jobs whose prediction applies
have at least 2 distinct gains), slope_vs_lyapunov.png (when a job has its loss at the last
step), training.png (when a job trained), time_map.png (when a job measured its time-to-time
map, probe.time_map=true) and report.md into DIR (default: PATH). report.md and
the console say how many jobs finished, failed, were interrupted (or are still running) and,
where the sweep's sweep.json lists its jobs, never started.

A PATH that is neither a sweep (multirun.yaml) nor a run (`.hydra/`, summary.json) but holds
sweep directories, and no job outside them, gets one report per sweep, each in the sweep's own
directory (DIR/<the sweep's path under PATH> with --out): one figure of several sweeps mixes
their jobs. Every file is written whole or not at all: all are drawn first, written to
temporary files beside their targets and renamed into place once every one is written.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rnnjax.app.results import (
    GRAD_NORMS,
    SUMMARY,
    _finished_jobs,
    load_metrics,
    load_summaries,
    load_sweep,
)
from rnnjax.report import frames, load_plots, timemaps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
GAIN_TOLERANCE = 0.05  # effective gains within 5% of each other count as one
MULTIRUN = "multirun.yaml"  # what marks a sweep directory (rnnjax.sweeps.app.run_sweep writes it)
SWEEP_PLAN = "sweep.json"  # a sweep's job list, written as it starts: {"jobs": [{"dir": ...}]}
REPORT = "report.md"
WRITE_FAILED, BAD_INPUT = 1, 2  # exit codes

_UMASK = os.umask(0)
os.umask(_UMASK)


def make_parser() -> argparse.ArgumentParser:
    """The command line; its `prog` is the name it was called by (`rnnjax report`,
    `report.py`), which the messages begin with."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Figures are drawn by rnnjax.report.plots from the tables of "
               "rnnjax.report.frames; numbers in the table have 4 significant digits.")
    parser.add_argument("path", type=Path, help="a run directory or a multirun directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the PNGs and report.md (default: PATH)")
    return parser


def n_gains(summaries: pd.DataFrame) -> int:
    """The number of distinct effective gains of the vanilla RNN's jobs (within
    GAIN_TOLERANCE: one)."""
    if frames.MF + "gain" not in summaries:
        return 0
    g = np.sort(summaries[frames.MF + "gain"].astype(float).to_numpy())
    g = g[np.isfinite(g) & (g > 0)]
    return int(g.size and 1 + np.sum(np.diff(np.log(g)) > np.log1p(GAIN_TOLERANCE)))


def decay_hue(df: pd.DataFrame) -> str:
    """The first of the usual sweep axes that varies: the colour of the decay curves."""
    cfg = frames.config_frame(df.drop_duplicates("job"))
    for col in ("T", "init_gain", "init_std", "init_radius", "init", "cell", "hidden_size",
                "loss_at", "task"):
        if col in cfg and cfg[col].nunique(dropna=False) > 1:
            return col
    return "T"


def data_line(df: pd.DataFrame, summaries: pd.DataFrame) -> str:
    """What was loaded, and how many grad_norm points no log-scale figure can show."""
    g = df["grad_norm"].to_numpy()
    seeds = sorted(df.groupby("job")["seed"].nunique().unique())
    under, other = int((g == 0).sum()), int((~np.isfinite(g)).sum())
    head = (f"{len(summaries)} finished job(s), {'/'.join(map(str, seeds))} seed(s) per job, "
            f"{len(g)} grad_norm values (every seed, t and logged training step): ")
    if not under and not other:
        return head + "every one finite and above 0, so the log-scale figures show them all."
    return (head + f"{under} underflowed to 0 and {other} are inf/NaN; log scales cannot show "
            "them, so the figures leave them out (medians over seeds still count them) and "
            "say how many medians they left out.")


def figures(df: pd.DataFrame, summaries: pd.DataFrame, metrics: pd.DataFrame | None
            ) -> list[tuple[str, str, str, Callable[[], "Figure"]]]:
    """(file, heading, caption, make) of each figure this sweep has (matplotlib and seaborn
    load here, once the data has)."""
    plots = load_plots()
    hue = decay_hue(df)
    pred = frames.predictions(summaries)
    theory = (" Dashed: the prediction where one applies, anchored at T − t = T/4."
              if pred["applies"].any() else
              " No prediction is drawn: none applies (with the loss over all steps every "
              "step's own loss term keeps the profile flat; `probe.loss_at=last` measures one "
              "term's decay).")
    out = [
        ("heatmap.png", "Gradient norm by timestep and configuration",
         "log10 ‖dL/dH_t‖ at initialization relative to its value at t = T (decades; medians "
         "over seeds), for every timestep t (x) and configuration (y): white as large as at "
         "t = T, blue smaller (vanishing), red larger (exploding), on a scale symmetric about 0; "
         "black cells: the median underflowed to 0.",
         lambda: plots.heatmap(df)),
        ("decay_curves.png", "Decay going back in time",
         "log10 ‖dL/dH_t‖ against steps back from the end, T − t, one panel per activation "
         f"or cell, colour: {plots.hue_title(hue)}; line: median over seeds, band: "
         "interquartile range." + theory,
         lambda: plots.decay_curves(df, summaries, hue=hue)),
    ]
    if n_gains(summaries[pred.reindex(summaries["job"])["applies"].to_numpy()]) >= 2:
        out.append((
            "phase_diagram.png", "Phase diagram: per-step factor against gain",
            "Measured factor of ‖dL/dH_t‖ per step back, 10^slope, against the effective gain "
            "g; lines: the mean-field factor √χ₁(g), dotted: the critical gain (χ₁ = 1). Below "
            "1 the gradient vanishes, above 1 it explodes.",
            lambda: plots.phase_diagram(summaries)))
    if (frames.config_frame(summaries).get("loss_at") == "last").any():
        out.append((
            "slope_vs_lyapunov.png", "Measured slope against the top Lyapunov exponent",
            "Measured slope of log10 ‖dL/dH_t‖ per step back against the top Lyapunov exponent "
            "of the input-driven hidden dynamics (both in decades per step), for the jobs with "
            "the loss at the last step; on the dashed line y = x they agree.",
            lambda: plots.slope_vs_lyapunov(summaries)))
    if metrics is not None:
        first = frames.job_order(metrics["job"])[0]
        out.append((
            "training.png", "Training",
            "Left: validation (solid) and training (dashed) perplexity, or loss where the task "
            "has none, against the training step, median over seeds (dotted: the memoryless "
            "baseline of the adding and copy tasks); right: the gradient profile of job "
            f"{first} at every logged training step.",
            lambda: plots.training_curves(metrics, df, summaries=summaries)))
        if "log10_slope_per_step_back" in metrics:  # metrics with the dynamics of each step
            out.append((
                "slope_during_training.png", "The slope during training",
                "The headline slope of log10 ‖dL/dH_t‖ per step back at initialization and at "
                "every logged training step, median over seeds: measured (solid), the theory's "
                "prediction where one applies (dashed), the top Lyapunov exponent (dotted).",
                lambda: plots.slope_during_training(metrics, summaries)))
    return out


# ------------------------------------------------------------------------------ job counts


def listed_jobs(sweep: Path) -> list[Path] | None:
    """The job directories that the sweep's sweep.json lists, or None where it has none.

    A sweep.json that cannot be read, or whose `jobs` is not a list of objects each with a
    `dir` inside the sweep directory, is warned about (naming the key) and counts as none.

    Args:
      sweep: a sweep directory.
    Returns:
      sweep / dir of each listed job, in the file's order; None without a usable sweep.json.
    """
    path = Path(sweep) / SWEEP_PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problem = f"cannot be read ({str(e).splitlines()[0]})"
    else:
        jobs = plan.get("jobs") if isinstance(plan, dict) else None
        problem = None if isinstance(jobs, list) else "`jobs` is not a list"
        for i, job in enumerate(jobs if problem is None else []):
            d = job.get("dir") if isinstance(job, dict) else None
            if not (isinstance(d, str) and d.strip("./") and not Path(d).is_absolute()
                    and ".." not in Path(d).parts):
                problem = f"`jobs[{i}].dir` is not a directory name inside the sweep"
                break
        if problem is None:
            return [Path(sweep) / job["dir"] for job in jobs]
    warnings.warn(f"{path}: {problem}; the jobs that never started are not counted",
                  stacklevel=2)
    return None


def job_counts(path: str | os.PathLike) -> dict[str, int | None]:
    """How many jobs of the run or sweep at `path` finished, failed, were interrupted (or are
    still running) and never started.

    Each job directory is read by `rnnjax.app.results.read_job`: finished (status ok or
    nonfinite), failed, or started and unfinished (a `.hydra/` but no valid summary.json:
    interrupted, or still running). A job that the sweep's sweep.json lists whose directory
    does not exist or has no `.hydra/` never started; without a sweep.json (older sweeps,
    single runs) that is not known.

    Args:
      path: a run or sweep directory.
    Returns:
      {"finished", "failed", "interrupted", "never_started", "listed"}: numbers of job
      directories; "never_started" and "listed" (the jobs sweep.json lists) are None
      without a usable sweep.json.
    """
    root = Path(path)
    done, others = _finished_jobs(root)
    state = {job: "finished" for job in done}
    state |= {job: "failed" if st.status == "failed" else "interrupted"
              for job, st in others.items()}
    listed = listed_jobs(root)
    for job in listed or []:
        if state.get(job, "interrupted") == "interrupted" and not (job / ".hydra").is_dir():
            state[job] = "never_started"
    counts = {k: sum(s == k for s in state.values())
              for k in ("finished", "failed", "interrupted", "never_started")}
    if listed is None:
        counts["never_started"] = None
    return counts | {"listed": None if listed is None else len(listed)}


def counts_text(counts: dict[str, int | None]) -> str:
    """`job_counts` in words: "2 finished, 1 failed, 1 interrupted or still running, 3 never
    started (of 7 that sweep.json lists)"; the last only where it is known."""
    text = (f"{counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['interrupted']} interrupted or still running")
    if counts.get("never_started") is not None:
        text += (f", {counts['never_started']} never started (of {counts['listed']} that "
                 f"{SWEEP_PLAN} lists)")
    return text


# ------------------------------------------------------------------------ several sweeps


def _job_dirs(root: Path) -> set[Path]:
    """The job directories under `root`, by the marks `rnnjax.app.results` knows them by."""
    marks = [*root.rglob(GRAD_NORMS), *root.rglob(SUMMARY), *root.rglob(".hydra")]
    return {p.parent for p in marks}


def _names(paths: list[Path], root: Path, most: int = 3) -> str:
    names = [str(p.relative_to(root)) or "." for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most
                                      else "")


def sweep_dirs(path: Path) -> list[Path]:
    """The sweep directories to report one by one: those under `path` (each with its
    multirun.yaml; the outermost ones), where `path` is neither a sweep nor a run itself.

    Returns:
      The sweep directories, sorted; [] where `path` is one sweep or run, or holds none.
    Raises:
      ValueError: `path` holds jobs outside its sweeps too (one report would mix them).
    """
    if (path / MULTIRUN).is_file() or (path / ".hydra").is_dir() or (path / SUMMARY).is_file():
        return []
    found = sorted({p.parent for p in path.rglob(MULTIRUN)})
    sweeps = [s for s in found if not any(o in s.parents for o in found)]
    if not sweeps:
        return []
    loose = sorted(j for j in _job_dirs(path)
                   if not any(s == j or s in j.parents for s in sweeps))
    if loose:
        raise ValueError(
            f"{path} holds {len(sweeps)} sweep(s) ({_names(sweeps, path)}) and {len(loose)} "
            f"job(s) outside them ({_names(loose, path)}); name one sweep or run directory")
    return sweeps


# ------------------------------------------------------------------------------ writing


class WriteError(Exception):
    """A report file or its directory could not be written; the message names the path."""


def _write_fd(fd: int, data: bytes) -> None:
    """Writes `data` to the open file `fd` and closes it."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _stage(target: Path, data: bytes) -> str:
    """`data` in a new temporary file beside `target` (removed again if writing fails)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        _write_fd(fd, data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give it the usual permissions
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_all(out: Path, files: dict[str, bytes]) -> None:
    """Writes `files` ({name: content}) into the directory `out`, whole or not at all: each to a
    temporary file first, all renamed into place (in order) once every one is written.

    Raises:
      WriteError: one line naming the path that could not be created or written, and why.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create directory {e.filename or out}: "
                         f"{e.strerror or e}") from e
    staged: dict[Path, str] = {}
    target = out
    try:
        for name, data in files.items():
            target = out / name
            staged[target] = _stage(target, data)
        for target, tmp in staged.items():
            os.replace(tmp, target)
    except OSError as e:
        raise WriteError(f"cannot write {target}: {e.strerror or e}") from e
    finally:
        for tmp in staged.values():  # the ones not renamed into place
            Path(tmp).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the report


def render(path: Path, df: pd.DataFrame, summaries: pd.DataFrame, metrics: pd.DataFrame | None,
           counts: dict[str, int | None], maps: pd.DataFrame | None = None) -> dict[str, bytes]:
    """Every file of the report, drawn in memory: {file name: content}, report.md last (`maps`:
    the jobs' time-to-time maps, `rnnjax.report.timemaps.load_time_maps`)."""
    files, sections = {}, []
    for file, heading, caption, make in (figures(df, summaries, metrics)
                                         + timemaps.figures(maps, summaries)):
        buf = io.BytesIO()
        # a pyplot-free Figure: nothing to close
        make().savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
        files[file] = buf.getvalue()
        sections.append(f"## {heading}\n\n![{heading}]({file})\n\n{caption}\n")
    text = "\n".join([
        "# Gradient dynamics report\n",
        f"`{path.resolve()}`: {data_line(df, summaries)}\n",
        f"Jobs: {counts_text(counts)}; the figures and the table show the finished ones.\n",
        *sections,
        "## Slopes per job\n",
        "Slopes are the log10 change of ‖dL/dH_t‖ per step back in time (negative: "
        "vanishing), the measured one fitted over the middle half of the usable steps, median "
        "over seeds; the prediction is shown where one applies (the loss at the last step); "
        "absolute difference: |measured − predicted| in decades per step; relative error: "
        "|measured − predicted| / |predicted|, left empty (—) where |predicted| < "
        f"{frames.NEAR_ZERO:g} decades per step, where dividing by it would blow any small "
        "difference up: there only the absolute difference counts.\n",
        frames.markdown_table(frames.slope_table(summaries)),
        "",
    ])
    files[REPORT] = text.encode()
    return files


def _error(prog: str, message: str, code: int = BAD_INPUT) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def report_one(path: Path, out: Path, prog: str) -> int:
    """Writes the report of the run or sweep `path` into `out`, saying what it wrote.

    Returns:
      The exit code: 0, BAD_INPUT where no job finished, WRITE_FAILED where a file could not
      be written (one line each, on stderr).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = job_counts(path)
        try:
            if not counts["finished"]:
                raise FileNotFoundError(f"no finished job under {str(path)!r}: "
                                        f"{counts_text(counts)}")
            df = load_sweep(path)
            summaries = load_summaries(path)
            metrics = load_metrics(path)
            maps = timemaps.load_time_maps(path)
        except FileNotFoundError as e:
            return _error(prog, str(e))
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"{prog}: warning: {message}", file=sys.stderr)
    files = render(path, df, summaries, metrics, counts, maps)
    try:
        write_all(out, files)
    except WriteError as e:
        return _error(prog, str(e), WRITE_FAILED)
    print(f"{prog}: jobs: {counts_text(counts)}")
    for name in files:
        print(f"{prog}: wrote {out / name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`rnnjax report PATH [--out DIR]` (see the module's docstring).

    Args:
      argv: the arguments after the program name (default: sys.argv[1:]).
    Returns:
      The exit code: 0; BAD_INPUT (2) for a PATH that is not a directory or has no finished
      job, an --out that is not a directory, or a PATH that mixes sweeps and other jobs;
      WRITE_FAILED (1) where a file could not be written. Each error is one line on stderr.
    """
    parser = make_parser()
    args, prog = parser.parse_args(argv), parser.prog
    path, out = args.path, args.out
    if not path.is_dir():
        return _error(prog, f"{str(path)!r} is not a directory")
    if out is not None and out.exists() and not out.is_dir():
        return _error(prog, f"--out {out} is not a directory")
    try:
        sweeps = sweep_dirs(path)
    except ValueError as e:
        return _error(prog, str(e))
    if not sweeps:
        return report_one(path, path if out is None else out, prog)
    print(f"{prog}: {path} holds {len(sweeps)} sweep(s): one report each, in "
          + ("the sweep's own directory" if out is None else f"{out}/<sweep>"))
    code = 0
    for sweep in sweeps:
        print(f"{prog}: sweep {sweep}")
        one = report_one(sweep, sweep if out is None else out / sweep.relative_to(path), prog)
        if one == WRITE_FAILED:  # a full disk or a read-only --out fails the next ones too
            return one
        code = code or one
    return code


if __name__ == "__main__":
    sys.exit(main())
