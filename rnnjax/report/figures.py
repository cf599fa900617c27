"""The published figures as data: conf/figures.yaml (shipped as rnnjax/conf/figures.yaml) read
into `Figure` records, which `rnnjax reproduce` runs and draws; and the tables of their report
sections (`TABLES`).

A figure's `draw` entry names a function of `rnnjax.report.plots` and the frames it takes; its
`tables` entry a function of TABLES. Reading the file loads PyYAML only: pandas, matplotlib and
the plots are imported where a figure is drawn or a table made.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rnnjax.report import load_plots
from rnnjax.sweeps.names import CONF_DIR

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure as MplFigure

FIGURES_FILE = CONF_DIR / "figures.yaml"
INPUTS = ("df", "summaries", "metrics", "names", "lyapunov")  # what `draw.inputs` may name


class Data(NamedTuple):
    """What a figure is drawn from: the frames of its jobs (and of its sources')."""

    df: pd.DataFrame  # load_sweep
    summaries: pd.DataFrame  # load_summaries
    metrics: pd.DataFrame | None  # load_metrics (None: no job trained)
    names: dict[str, str]  # job -> its legend name, where the figure gives one
    lyapunov: pd.DataFrame | None = None  # load_lyapunov (None: no job has spectra)


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


def _draw(plot: str, inputs: tuple[str, ...], args: dict[str, Any], data: Data) -> MplFigure:
    """`plots.<plot>` called with the frames `inputs` of `data` and `args`, as keywords."""
    return getattr(load_plots(), plot)(**{k: getattr(data, k) for k in inputs}, **args)


def _slopes(data: Data) -> list[pd.DataFrame]:
    from rnnjax.report import frames

    return [frames.slope_table(data.summaries)]


def _falls(data: Data) -> list[pd.DataFrame]:
    """fig4's tables: how far each job's gradient falls from t = T to t = 1, over seeds."""
    import numpy as np
    import pandas as pd

    from rnnjax.report import frames

    fall = frames.fall_per_seed(frames.layer_jobs(data.df))  # a stack: a row per layer
    summaries = frames.layer_jobs(data.summaries)
    label = dict(zip(summaries["job"], frames.config_label(summaries), strict=True))
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
    return [pd.DataFrame(rows), *_slopes(data)]


def _training(data: Data) -> list[pd.DataFrame]:
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
        sizes = {k: int(first[f"task_{k}"]) for k in ("tokens", "symbols")
                 if pd.notna(first.get(f"task_{k}"))}  # selective_copy's
        row = {
            "job": label.get(job, job), "steps": int(last["train_step"].iloc[0]),
            "final training loss (last interval, median over seeds)":
                float(last["train_loss"].median()),
            "final validation loss": float(last["val_loss"].median()),
            "memoryless baseline": frames.memoryless_baseline(first["task"], int(first["T"]),
                                                              first["loss_at"], **sizes),
            "diverged seeds": int((~last["alive"].astype(bool)).sum()),
        }
        if "val_accuracy" in last and last["val_accuracy"].notna().any():
            row["final validation accuracy (median over seeds)"] = float(
                last["val_accuracy"].median())
        rows.append(row)
    return [pd.DataFrame(rows), *_slopes(data)]


def _curse(data: Data) -> list[pd.DataFrame]:
    from rnnjax.report import frames

    curse = frames.curse_of_memory(data.summaries)
    slopes = frames.power_law_slopes(curse)
    slopes["quantity"] = slopes["quantity"].map({k: v[0] for k, v in frames.CURSE.items()})
    return [curse.drop(columns="job"), slopes]


# The kinds of report section: the tables each one shows (their headings: the file's `tables`)
TABLES: dict[str, Callable[[Data], list[pd.DataFrame]]] = {
    "slopes": _slopes, "falls": _falls, "final_losses": _training, "curse_of_memory": _curse}


@functools.cache
def published(path: str | Path = FIGURES_FILE) -> dict[str, Any]:
    """The figures file `path` as read (title, preamble, tables, figures)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def sections(kind: str, data: Data) -> list[tuple[str, pd.DataFrame]]:
    """(heading, table) of each table of a report section of the kind `kind` (a key of
    TABLES), its headings from the figures file."""
    from rnnjax.report.stats import CURSE_FROM

    headings = published()["tables"][kind]
    tables = TABLES[kind](data)
    return [(h.format(start=CURSE_FROM), t) for h, t in zip(headings, tables, strict=True)]


slopes = functools.partial(sections, "slopes")  # the default section: the slope table


def _problem(name: str, spec: Any) -> str | None:
    """What is wrong with the entry `name` of the figures file, in words; None when nothing."""
    if not isinstance(spec, dict):
        return "is not a mapping"
    unknown = set(spec) - {"common", "jobs", "grid", "names", "table_only", "draw", "tables",
                           "sources", "caption"}
    if unknown:
        return f"has unknown keys {sorted(unknown)}"
    draw = spec.get("draw")
    if not (isinstance(draw, dict) and isinstance(draw.get("plot"), str)):
        return "needs draw.plot (a function of rnnjax.report.plots)"
    if not set(draw.get("inputs", [])) <= set(INPUTS):
        return f"draw.inputs may name {', '.join(INPUTS)}"
    if spec.get("tables", "slopes") not in TABLES:
        return f"tables must be one of {', '.join(TABLES)}"
    if not isinstance(spec.get("caption"), str):
        return "needs a caption"
    return None


def figure(name: str, spec: dict[str, Any]) -> Figure:
    """The Figure of the entry `name` of the figures file; a ValueError (one line, naming the
    entry and what is allowed) where it is not one."""
    problem = _problem(name, spec)
    if problem:
        raise ValueError(f"{FIGURES_FILE.name}: figure {name} {problem}")
    draw = spec["draw"]
    jobs = grid(**spec["grid"]) if "grid" in spec else [list(j) for j in spec.get("jobs", [])]
    return Figure(
        draw=functools.partial(_draw, draw["plot"], tuple(draw.get("inputs", ())),
                               dict(draw.get("args", {}))),
        caption=spec["caption"], jobs=jobs, common=list(spec.get("common", [])),
        names={int(k): str(v) for k, v in spec.get("names", {}).items()},
        tables=functools.partial(sections, spec["tables"]) if "tables" in spec else None,
        sources=tuple(spec.get("sources", ())), table_only=tuple(spec.get("table_only", ())))


def load_figures(path: str | Path = FIGURES_FILE) -> dict[str, Figure]:
    """The figures of the file `path` (default: the published ones), in its order."""
    return {name: figure(name, spec)
            for name, spec in (published(path).get("figures") or {}).items()}


def report_head(command: str, how: str) -> list[str]:
    """The head of REPORT.md: its title and preamble from the figures file, `command` the
    command that regenerates it, `how` how its last run went."""
    text = published()
    return [text["title"] + "\n", text["preamble"].format(command=command) + how + "\n"]


__all__ = ["FIGURES_FILE", "INPUTS", "TABLES", "Data", "Figure", "figure", "grid",
           "load_figures", "published", "report_head", "sections", "slopes"]
