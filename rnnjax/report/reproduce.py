"""Regenerate every published figure and results/REPORT.md with one command.

    rnnjax reproduce                              # every figure, into ./results
    rnnjax reproduce --only fig3_phase_diagram
    rnnjax reproduce --out /tmp/results
    (python experiments/reproduce.py takes the same arguments)

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
import importlib
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure as MplFigure

    from rnnjax.app.config import Config

RESULTS = Path("results")  # the default --out, relative to the current directory
DPI = 90
PROGRESS_S = 2.0  # planning: a progress line at most this often
HEARTBEAT_S = 10.0  # a job still running after this long gets a line, and again after as long
COMMAND = "rnnjax reproduce"  # what the report tells its reader to run
log = logging.getLogger("reproduce")

# Names this module imported at its top before; now loaded on first use (`__getattr__`).
_LAZY = {"job_name": "rnnjax.sweeps.app", "job_config": "rnnjax.sweeps.app",
         "CONF_DIR": "rnnjax.sweeps.app",
         "ConfigError": "rnnjax.app.config", "prepare_data": "rnnjax.app.config",
         "register_configs": "rnnjax.app.config", "DataError": "rnnjax.core.tasks",
         "load_sweep": "rnnjax.app.results", "load_summaries": "rnnjax.app.results",
         "load_metrics": "rnnjax.app.results", "frames": "rnnjax", "plots": "rnnjax"}


def __getattr__(name: str) -> Any:
    """`reproduce.job_name` and the other names of _LAZY, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "plots":
        return _plots()
    module = importlib.import_module(_LAZY[name])
    return getattr(module, name) if hasattr(module, name) else importlib.import_module(
        f"{_LAZY[name]}.{name}")


def _plots():
    """rnnjax.report.plots (seaborn and matplotlib: a second or more to import), imported when a
    figure is first drawn; matplotlib headless (before seaborn imports pyplot)."""
    import matplotlib

    matplotlib.use("Agg")
    from rnnjax.report import plots

    return plots


class Data(NamedTuple):
    """What a figure is drawn from: the frames of its jobs (and of its sources')."""

    df: pd.DataFrame  # load_sweep
    summaries: pd.DataFrame  # load_summaries
    metrics: pd.DataFrame | None  # load_metrics (None: no job trained)
    names: dict[str, str]  # job -> its legend name, where the figure gives one


@dataclass(frozen=True)
class Figure:
    """A published figure: the jobs it needs and how it is drawn and described."""

    draw: Callable[[Data], MplFigure]
    caption: str
    jobs: list[list[str]] = field(default_factory=list)  # each job's own Hydra overrides
    common: list[str] = field(default_factory=list)  # overrides of every job
    names: dict[int, str] = field(default_factory=dict)  # job index -> legend name
    # (markdown heading, table) of the section, from the data; default: the slope table
    tables: Callable[[Data], list[tuple[str, pd.DataFrame]]] | None = None
    sources: tuple[str, ...] = ()  # figures whose jobs it is drawn from too
    table_only: tuple[int, ...] = ()  # jobs (by index) its tables show but it does not draw


def grid(**axes: list) -> list[list[str]]:
    """The overrides of every combination of the given key -> values."""
    jobs = [[]]
    for key, values in axes.items():
        jobs = [job + [f"{key}={v}"] for job in jobs for v in values]
    return jobs


GAINS = [0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0]
CELLS = ["vanilla", "gru", "lstm", "urnn", "lru"]
ARJOVSKY = ["task=adding", "seq_len=1000", "batch_size=20", "train.steps=100",
            "train.optimizer=rmsprop", "train.lr=0.001", "train.initial_scale=0.001",
            "train.log_every=100"]
SPREAD_SEEDS = 64


def _slopes(data: Data) -> list[tuple[str, pd.DataFrame]]:
    from rnnjax.report import frames

    return [("Slopes per job", frames.slope_table(data.summaries))]


def _falls(data: Data) -> list[tuple[str, pd.DataFrame]]:
    """fig4's tables: how far each job's gradient falls from t = T to t = 1, over seeds."""
    import numpy as np
    import pandas as pd

    from rnnjax.report import frames

    fall = frames.fall_per_seed(data.df)
    label = dict(zip(data.summaries["job"], frames.config_label(data.summaries), strict=True))
    rows = []
    qs = {"10%": 0.1, "25%": 0.25, "median": 0.5, "75%": 0.75, "90%": 0.9}
    for (job, step), g in fall.groupby(["job", "train_step"], sort=False):
        f = g["fall"].to_numpy(float)[None, :]  # quantiles that count an underflow as inf
        rows.append({
            "model": data.names.get(job, label.get(job, job)), "training step": int(step),
            "seeds": f.size,
            **{f"{k} (decades)": float(frames.quantile(f, q)[0]) for k, q in qs.items()},
            "underflowed at t = 1": int(np.isposinf(f).sum()),
            "not finite": int(np.isnan(f).sum()),
        })
    table = pd.DataFrame(rows)
    return [("How many decades ‖dL/dH_t‖ falls from t = T back to t = 1, over seeds "
             "(log10 at t = T minus log10 at t = 1; underflow to 0 counts as an infinite fall)",
             table), *_slopes(data)]


def _training(data: Data) -> list[tuple[str, pd.DataFrame]]:
    """fig8's table: each job's final training and validation loss beside its baseline."""
    import pandas as pd

    from rnnjax.report import frames

    m = data.metrics
    cfg = frames.config_frame(m)
    m = m.assign(task=cfg["task"], T=cfg["T"], loss_at=cfg["loss_at"])
    label = dict(zip(data.summaries["job"], frames.config_label(data.summaries), strict=True))
    rows = []
    for job in frames.jobs_table(data.summaries)["job"]:
        g = m[m["job"] == job]
        if g.empty:
            continue
        last = g[g["train_step"] == g["train_step"].max()]
        first = g.iloc[0]
        rows.append({
            "job": label.get(job, job), "steps": int(last["train_step"].iloc[0]),
            "final training loss (last interval, median over seeds)":
                float(last["train_loss"].median()),
            "final validation loss": float(last["val_loss"].median()),
            "memoryless baseline": frames.memoryless_baseline(first["task"], int(first["T"]),
                                                              first["loss_at"]),
            "diverged seeds": int((~last["alive"].astype(bool)).sum()),
        })
    return [("Final losses", pd.DataFrame(rows)), *_slopes(data)]


def _curse(data: Data) -> list[tuple[str, pd.DataFrame]]:
    from rnnjax.report import frames

    curse = frames.curse_of_memory(data.summaries)
    slopes = frames.power_law_slopes(curse)
    slopes["quantity"] = slopes["quantity"].map({k: v[0] for k, v in frames.CURSE.items()})
    return [("The LRU's gradients at initialization (median over seeds)",
             curse.drop(columns="job")),
            (f"Log-log slopes against 1/(1 − r), from 1/(1 − r) = {frames.CURSE_FROM:g} on "
             "(predicted: for i.i.d. drives, see the README's LRU section)", slopes)]


FIGURES = {
    "fig1_vanishing_vs_length": Figure(
        common=["init=normal", "probe.loss_at=last", "hidden_size=32", "batch_size=32",
                "seeds=4", "dtype=float64"],
        jobs=grid(activation=["tanh", "sigmoid", "relu"], seq_len=[16, 64, 256, 1024]),
        draw=lambda d: _plots().decay_curves(d.df, d.summaries, hue="T"),
        caption="‖dL/dH_t‖ against steps back from the loss at the last step, at d2l's "
                "initialization (every weight N(0, 0.01²), H = 32, batch 32, 4 seeds, float64), "
                "for T = 16 to 1024: the gradient falls by a constant factor per step and "
                "reaches float64's underflow within about 250 steps, whatever T is (the x-axis "
                "ends where the last median is finite). Dashed: the mean-field slope.",
    ),
    "fig2_activation_init_grid": Figure(
        common=["probe.loss_at=last", "seq_len=64", "hidden_size=64", "batch_size=32",
                "seeds=4"],
        jobs=grid(init=["normal", "xavier", "orthogonal", "identity", "gaussian", "spectral"],
                  activation=["tanh", "sigmoid", "relu", "linear"]),
        draw=lambda d: _plots().decay_curves(d.df, d.summaries, hue="init", row="init"),
        caption="Decay curves for every activation (columns) × initialization (rows, with its "
                "parameter), T = 64, H = 64, batch 32, 4 seeds, loss at the last step; dashed: "
                "the mean-field prediction, for a random W_hh (none for the identity). xavier "
                "and gaussian g = 1 draw W_hh from the same N(0, 1/H) with the same keys, so "
                "their rows coincide.",
    ),
    "fig3_phase_diagram": Figure(
        # The gains of one activation are vmapped in one job (init.gain as a list).
        common=["init=gaussian", "probe.loss_at=last", "seq_len=48", "hidden_size=512",
                "batch_size=16", "seeds=4", f"init.gain=[{','.join(map(str, GAINS))}]"],
        jobs=grid(activation=["tanh", "relu", "sigmoid", "linear"]),
        draw=lambda d: _plots().phase_diagram(d.summaries),
        caption="Measured per-step factor of ‖dL/dH_t‖ against the gain g of W_hh ~ N(0, g²/H) "
                "(H = 512, T = 48, batch 16, 4 seeds), with the mean-field curve "
                "sqrt(chi_1(g)) and the critical gains where chi_1 = 1.",
    ),
    "fig4_urnn_gradients": Figure(
        common=ARJOVSKY,
        jobs=[["hidden_size=128", "activation=tanh", "init=xavier_uniform",
               "train.clip_value=1", "seeds=4"],
              ["hidden_size=128", "cell=lstm", "init=xavier_uniform", "cell.forget_bias=1",
               "cell.peephole=true", "train.clip_value=1", "seeds=1"],
              ["hidden_size=512", "cell=urnn", "seeds=1"],
              ["hidden_size=128", "activation=relu", "init=identity", "train.clip_value=1",
               "seeds=1"],
              ["hidden_size=128", "activation=tanh", "init=xavier_uniform",
               f"seeds={SPREAD_SEEDS}", "train.steps=0"],
              ["hidden_size=128", "activation=tanh", "init=xavier", f"seeds={SPREAD_SEEDS}",
               "train.steps=0"]],
        names={0: "tanh RNN", 1: "LSTM", 2: "uRNN (H = 512)", 3: "IRNN",
               4: f"tanh RNN, {SPREAD_SEEDS} networks at initialization",
               5: f"tanh RNN with Glorot normal W, {SPREAD_SEEDS} networks at initialization"},
        table_only=(5,),
        draw=lambda d: _plots().before_after(d.df, d.summaries, d.metrics, names=d.names),
        tables=_falls,
        caption="Arjovsky, Shah & Bengio's figure: ‖dC/dh_t‖ over t = 1..1000 on the adding "
                "problem (batch 20, loss at the last step) at initialization and after 100 "
                "RMSProp steps (lr 1e-3, decay 0.9 (optax's default), the mean square starting "
                "at 1e-3 as theirs: `train.initial_scale=0.001`), for the models of their code: "
                "a tanh RNN (H = 128, W_hh Glorot uniform: `init=xavier_uniform`), an LSTM "
                "(H = 128, `cell=lstm init=xavier_uniform cell.forget_bias=1 "
                "cell.peephole=true`), the uRNN (H = 512, `cell=urnn`, the paper's "
                "initialization) and, as a fourth line, the IRNN (ReLU, W_hh = I), each clipped "
                "element-wise at 1 except the uRNN (`train.clip_value=1`), as theirs. Where ours "
                "differs: W_xh and W_hq (and the LSTM's W_x*) are Glorot normal, not uniform "
                "(the same variance); the LSTM's peephole is diagonal (w_co (H,); theirs a full "
                "matrix) and its h_0, c_0 are zero (theirs are learned from zero); optax adds "
                "eps = 1e-8 inside RMSProp's square root (theirs none); seeds: 4 of the tanh "
                "RNN, 1 of the LSTM, the uRNN and the IRNN (the uRNN's 100 steps take 1–2 "
                "minutes on 2 CPU cores). Thin lines: single networks; band: the 10th–90th "
                f"percentile of the tanh RNN over {SPREAD_SEEDS} draws of its weights at "
                "initialization. How far the tanh RNN's gradient falls over the 1000 steps "
                "depends on the draw far more than on anything else (first table; its last row, "
                "not drawn, repeats the 64 draws with Glorot normal W: the same spread); the "
                "paper's one network falls about 13.5 decades. The IRNN diverges within the 100 "
                "steps (status nonfinite, no line after training); our uRNN's gradient, flat at "
                "initialization, falls after training where the paper's stays nearly flat "
                "(README: Reports and figures).",
    ),
    "fig5_d2l_training": Figure(
        common=["+experiment=d2l_rnn_scratch", "seeds=1", "train.epochs=20"],
        jobs=[["train.clip=1.0"], ["train.clip=null"]],
        draw=lambda d: _plots().training_curves(d.metrics, d.df, summaries=d.summaries),
        caption="d2l's RNN language model (20 of d2l's 100 epochs, one seed) with and without "
                "clipping at 1: perplexity curves and the gradient profile over training. "
                "The global gradient norm never exceeds 1 in this setting, so clipping is never "
                "active and the two runs coincide (one line hides the other); see "
                "`+experiment=d2l_irnn_clipping` for a setting where it matters.",
    ),
    "fig6_lyapunov_vs_slope": Figure(
        sources=("fig2_activation_init_grid", "fig3_phase_diagram"),
        draw=lambda d: _plots().slope_vs_lyapunov(d.summaries),
        caption="Measured slope against the top Lyapunov exponent of the driven hidden "
                "dynamics, over the activation × initialization grid and the phase diagram.",
    ),
    "fig7_cells_at_init": Figure(
        common=["probe.loss_at=last", "hidden_size=128", "batch_size=20", "seeds=2"],
        jobs=[[f"cell={c}", f"task={task}", f"seq_len={T - (20 if task == 'copy' else 0)}"]
              for task in ("adding", "copy") for T in (100, 1000) for c in CELLS],
        draw=lambda d: _plots().cells_at_init(d.df, d.summaries),
        caption="Every cell at its own default initialization (vanilla: tanh, d2l's N(0, 0.01²); "
                "GRU and LSTM: d2l's N(0, 0.01²), forget bias 0; uRNN: the paper's; LRU: the "
                "ring |λ| in [0.9, 0.999]), H = 128, batch 20, 2 seeds, loss at the last step, "
                "float32, on the adding and copy tasks with T = 100 and 1000 steps (copy: "
                "seq_len = T − 20). Each line is log10 ‖dL/dH_t‖ minus its value at t = T. The "
                "vanilla RNN falls about 0.95 decades per step (log10(0.01·√128); mean field "
                "agrees) and underflows float32 within about 40 steps; the gated cells at d2l's "
                "small weights lose 0.28 decades per step, a little less than their mean gate "
                "(1/2: −0.30); the uRNN keeps the norm; the LRU decays as its mix of "
                "|λ|^(T−t), exactly as its theory says. Dashed: each cell's prediction.",
    ),
    "fig8_cells_training": Figure(
        common=["train.optimizer=rmsprop", "train.lr=0.001", "train.clip=1", "hidden_size=128",
                "batch_size=20", "seeds=1", "train.log_every=20", "train.steps=200"],
        jobs=[[f"cell={c}", *task] for task in (["task=copy", "seq_len=100"],
                                                 ["task=adding", "seq_len=200"])
              for c in CELLS],
        draw=lambda d: _plots().cells_training(d.metrics, d.summaries),
        tables=_training,
        caption="Every cell trained with RMSProp (lr 1e-3, global-norm clip 1, batch 20, "
                "H = 128, one seed, 200 steps; every cell sees the same batches) on copy "
                "(seq_len 100: T = 120 steps, cross-entropy over all steps) and adding (T = 200, "
                "squared error at the last step), each at its own default initialization; "
                "lines: the training loss, mean over each interval of 20 steps (the validation "
                "loss in the table is one held-out batch of 20, a noisy number). Dotted: the "
                "memoryless baselines, 10·log 8 / 120 = 0.173 for copy and MSE 1/6 for adding. "
                "On copy the uRNN goes far below its baseline within 200 steps and the LRU "
                "reaches it, while the vanilla RNN, GRU and LSTM at d2l's small weights are "
                "still above it; on adding no cell gets below the baseline in 200 steps. The "
                "LRU as defined here is linear from x to o (no nonlinear layer after y_t), so it "
                "cannot multiply a value by its marker and stays at the adding baseline or "
                "above.",
    ),
    "fig9_curse_of_memory": Figure(
        common=["+experiment=curse_of_memory"],
        jobs=grid(**{"cell.r_min": [0.5, 0.9, 0.99, 0.999], "cell.normalize": ["true", "false"]}),
        draw=lambda d: _plots().curse_of_memory(d.summaries),
        tables=_curse,
        caption="The curse of memory (Zucchet & Orvieto 2024), from `+experiment=curse_of_memory`: "
                "the LRU with every |λ| = r (r_min = r_max), random tokens, T = 8192, H = 64, "
                "batch 16, 8 seeds, loss at the last step, at initialization. ‖dL/dλ‖ grows "
                "like a power of the memory 1/(1 − r) with and without the input normalization "
                "γ = sqrt(1 − r²), which lowers the power by one half; only ‖dL/dν_log‖, the "
                "gradient of the LRU's own magnitude parameter, stays bounded, and only with "
                "normalization.",
    ),
}


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
    """Work of a job in arbitrary units: the trajectory it scans times the passes over it."""
    passes = 1 + 3 * (cfg.train.steps or 0) + (cfg.train.epochs or 0) * 30
    from rnnjax.app.config import cell_options
    from rnnjax.core.cells import registry

    width = registry.cost(cfg.cell.name.value, cell_options(cfg), cfg.hidden_size)
    return passes * cfg.seq_len * cfg.batch_size * cfg.seeds * width


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

    from rnnjax.app.config import prepare_data
    from rnnjax.sweeps.app import CONF_DIR, job_config, job_name

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

    from rnnjax.app.results import load_metrics, load_summaries, load_sweep
    from rnnjax.sweeps.app import job_name

    parts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for figure in figures:
            for own in FIGURES[figure].jobs:
                job = f"{figure}/{job_name(own)}"
                where = out / "runs" / "reproduce" / job
                try:
                    frames_of = (load_sweep(where), load_summaries(where), load_metrics(where))
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
    metrics = [m for _, _, m in parts if m is not None]
    return Data(pd.concat([df for df, _, _ in parts], ignore_index=True),
                pd.concat([s for _, s, _ in parts], ignore_index=True),
                pd.concat(metrics, ignore_index=True) if metrics else None, names)


def write_section(name: str, out: Path) -> Path | None:
    """Draws figure `name` from its jobs' and its sources' directories and writes its report
    section (OUT/figures/NAME.md); returns the PNG's path, or None (nothing written) when none
    of those jobs finished."""
    from rnnjax.report import frames
    from rnnjax.sweeps.app import job_name

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
    fig.draw(Data(drawn(data.df), drawn(data.summaries), drawn(data.metrics), names)).savefig(
        png, dpi=DPI, bbox_inches="tight")
    tables = (fig.tables or _slopes)(data)
    parts = [f"## {name}\n", f"![{name}](figures/{name}.png)\n", fig.caption + "\n"]
    for heading, table in tables:
        parts += [f"{heading}:\n", frames.markdown_table(table) + "\n"]
    parts.append(f"Made by `{COMMAND} --only {name}`.\n")
    (figures / f"{name}.md").write_text("\n".join(parts))
    return png


def write_report(out: Path, how: str) -> None:
    """OUT/REPORT.md from every figure section present, in figure order; `how` says how this
    run went (its time, the jobs it ran and reused, the machine's load)."""
    parts = [
        "# rnnjax: reproduced figures\n",
        f"Regenerate everything with `{COMMAND}` (one figure: `--only NAME`; elsewhere: "
        "`--out DIR`; finished jobs are reused). Slopes are log10 "
        "changes of ‖dL/dH_t‖ per step back in time (negative: vanishing), fitted over the "
        "middle half of the steps above underflow, median over seeds; a prediction is shown "
        "only where it applies (the loss at the last step): mean field log10 sqrt(chi_1) for "
        "the vanilla RNN with a random W_hh, each cell's own for the others; Pascanu's bound "
        "log10(gamma sigma_max(W_hh)); the top Lyapunov exponent in log10 per step; absolute "
        "difference: |measured − predicted| in decades per step; relative error: that over "
        "|predicted|, left empty (—) where |predicted| < 0.01 decades per step. " + how
        + "\n",
    ]
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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="jobs run at once, each in its own process (default: 1; on 2 CPU "
                             "cores two compiling processes are slower than one)")
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
    from rnnjax.app.config import ConfigError, register_configs  # JAX and Hydra: seconds
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
