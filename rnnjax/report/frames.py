"""The tables behind the figures and reports of a run or sweep: config columns under canonical
names, labels, job order, the predictions that apply and slope tables (statistics over seeds:
`rnnjax.report.stats`; the tasks' memoryless baselines: `rnnjax.core.baselines`).

pandas and numpy only, and files only: labels, a cell's options and the order of cells,
activations and inits come from the columns the job wrote (summary.json's `cell_label`,
`model_label`, `cell_order`, ...: `rnnjax.app.results.JOB_KEYS`), with generic text where
results written before them lack those. `rnnjax.report.plots` draws from these frames,
`rnnjax.report.build` and `rnnjax.report.reproduce` print them. They take the frames of
`rnnjax.app.results` (`load_sweep`, `load_summaries`, `load_metrics`).
"""

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from rnnjax.app import markdown
from rnnjax.core.baselines import ADDING_BASELINE, memoryless_baseline
from rnnjax.report.stats import (
    CURSE,
    CURSE_FROM,
    curse_of_memory,
    dropped_note,
    fall_per_seed,
    job_T,
    layer_jobs,
    power_law_slopes,
    profile_stats,
    quantile,
    top_layer,
)

# Columns of load_summaries frames.
SLOPE = "headline.log10_slope_per_step_back"
THEORY = "headline.theory."
MF = THEORY + "mean_field."
PASCANU = THEORY + "pascanu_log10_bound_per_step"
LYAPUNOV = THEORY + "lyapunov_top_log10_per_step"
PREDICTED = THEORY + "predicted_log10_slope_per_step_back"
PREDICTION = THEORY + "prediction"
APPLIES = THEORY + "applies"  # False where the job says no prediction applies
# Below this |predicted slope| (decades per step) the slope table leaves the relative error
# empty: dividing by a prediction near 0 blows any small difference up (a linear network at
# g = 1 predicts -6e-05 and measures 0.003: relative error 48.8), so only the absolute
# difference says how close they are.
NEAR_ZERO = 0.01


class Key(NamedTuple):
    """A config key as the tables show it."""

    path: str  # its place in the resolved config ("init.gain"; "T": summary.json's own)
    text: Callable[[Any], str]  # the label of one (non-missing) value


def _fmt(pattern: str) -> Callable[[Any], str]:
    return pattern.format


# Config keys in label order: canonical name (the column of load_sweep / load_metrics frames)
# -> where it is in the config and how one value reads. `cell_label` is how the job's cell
# options read (summary.json's, or `key=value` of each set option where it has none).
KEYS: dict[str, Key] = {
    "cell": Key("cell.name", _fmt("{}")),
    "activation": Key("activation.name", _fmt("{}")),
    "init": Key("init.name", _fmt("{}")),
    "init_std": Key("init.std", _fmt("std={:g}")),
    "init_gain": Key("init.gain", _fmt("g={:g}")),
    "init_radius": Key("init.radius", _fmt("ρ={:g}")),
    "cell_label": Key("cell_label", _fmt("{}")),
    "layers": Key("model.layers", _fmt("{:g} layers")),
    "layer": Key("layer", _fmt("layer {:g}")),  # of a stack, split by `layer_jobs`
    "task": Key("task.name", _fmt("{}")),
    "vocab_size": Key("task.vocab_size", _fmt("V={:g}")),
    "T": Key("T", _fmt("T={:g}")),
    "seq_len": Key("seq_len", _fmt("seq_len={:g}")),
    "hidden_size": Key("hidden_size", _fmt("H={:g}")),
    "batch_size": Key("batch_size", _fmt("B={:g}")),
    "loss_at": Key("probe.loss_at", _fmt("loss at {}")),
    "dtype": Key("dtype", _fmt("{}")),
    "optimizer": Key("train.optimizer", _fmt("{}")),
    "lr": Key("train.lr", _fmt("lr={:g}")),
    "clip": Key("train.clip", _fmt("clip={:g}")),
    "clip_value": Key("train.clip_value", _fmt("clip value {:g}")),
    "bptt": Key("train.bptt", _fmt("{} BPTT")),
    "truncate": Key("train.truncate", _fmt("k={:g}")),
    "steps": Key("train.steps", _fmt("{:g} steps")),
    "epochs": Key("train.epochs", _fmt("{:g} epochs")),
}
INIT_PARAMS = ("init_std", "init_gain", "init_radius")
MISSING = {"clip": "no clip"}  # what a missing value says; other keys then say nothing
# What the job wrote about its cell (rnnjax.app.results.JOB_KEYS), kept by `config_frame`:
# where the cell, activation and init stand, whether the cell takes the config's activation
# and init, and what the network is in one word.
ORDERS = {"cell": "cell_order", "activation": "activation_order", "init": "init_order"}
TAKES = {"activation": "cell_takes_activation", "init": "cell_takes_init"}
JOB_COLUMNS = ("model_label", *ORDERS.values(), *TAKES.values())

# Legend titles of the columns a figure can colour by.
NAMES = {
    "T": "timesteps T",
    "seq_len": "sequence length",
    "init_gain": "gain g",
    "init_std": "init std",
    "init_radius": "spectral radius ρ",
    "init": "initialization",
    "cell": "cell",
    "layers": "layers L",
    "layer": "layer (1: reads the input)",
    "hidden_size": "hidden units H",
    "batch_size": "batch size B",
    "task": "task",
    "loss_at": "loss at",
    "dtype": "dtype",
}


def job_order(jobs: Iterable[str]) -> list[str]:
    """The distinct job names in natural order ("2" before "10", "g=1.25" before "g=1.5")."""
    def key(job: str) -> list[tuple[int, float, str]]:
        parts = re.split(r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)", job)
        return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]

    return sorted({str(j) for j in jobs}, key=key)


def _column(df: pd.DataFrame, name: str) -> str | None:
    """The column of `df` that holds config key `name`: its canonical name, its config path
    (dotted or with underscores) or the path under "config." (a load_summaries frame)."""
    path = KEYS[name].path if name in KEYS else name
    for col in (name, path, path.replace(".", "_"), "config." + path):
        if col in df:
            return col
    return None


def _cell_options(df: pd.DataFrame) -> dict[str, str]:
    """option -> the column of `df` holding that cell option (`cell_X` of the loaders' frames,
    `cell.X` or `config.cell.X`), the job's own keys (`cell_label`, ...) aside."""
    own = {"cell", "cell_label", *JOB_COLUMNS}
    out = {}
    for col in df.columns:
        for prefix in ("config.cell.", "cell.", "cell_"):
            if isinstance(col, str) and col.startswith(prefix) and col not in own:
                option = col.removeprefix(prefix)
                if option != "name":
                    out.setdefault(option, col)
                break
    return out


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float | np.floating) else str(v)


def options_text(df: pd.DataFrame) -> pd.Series:
    """Each row's cell options as generic "key=value" text (every option the row sets, in
    column order; "" for none): the label of results written before summary.json said how
    its cell's options read (`cell_label`)."""
    cols = _cell_options(df)
    parts = [df[col].map(lambda v, k=k: "" if _is_missing(v) else f"{k}={_value_text(v)}")
             for k, col in cols.items()]
    if not parts:
        return pd.Series("", index=df.index)
    return pd.Series([", ".join(p for p in row if p) for row in zip(*parts, strict=True)],
                     index=df.index)


def config_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The config columns of `df` under their canonical names (`cell`, `T`, `init_gain`,
    `clip`, `cell_label`, ...) and what the job wrote about its cell (JOB_COLUMNS), from a
    `load_sweep` / `load_metrics` frame or a `load_summaries` one. `cell_label` is the job's,
    else (results written before it) `options_text`."""
    cols = {}
    for name in [*KEYS, *JOB_COLUMNS]:
        col = _column(df, name)
        if col is not None:
            cols[name] = df[col]
    out = pd.DataFrame(cols, index=df.index)
    generic = options_text(df)
    if "cell_label" in out:
        out["cell_label"] = out["cell_label"].where(out["cell_label"].notna(), generic)
    elif (generic != "").any():
        out["cell_label"] = generic
    return out[[c for c in [*KEYS, *JOB_COLUMNS] if c in out]]


def format_values(values: pd.Series, key: str) -> pd.Series:
    """The label text of each value of config key `key` ("" or MISSING's word where missing)."""
    missing = MISSING.get(key, "")
    text = KEYS[key].text
    return values.map(lambda v: missing if _is_missing(v) else text(v))


def _is_missing(v: Any) -> bool:
    """None, NaN or pandas' NA (a nullable column's gap); a list value is never missing."""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _flags(cfg: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column of the job's (TAKES) as plain bools; True where the job did not say."""
    if column not in cfg:
        return pd.Series(True, index=cfg.index)
    return cfg[column].map(lambda v: True if _is_missing(v) else bool(v))


def model(cfg: pd.DataFrame) -> pd.Series:
    """What each job's network is, in one word: the job's `model_label` (the activation where
    the cell's activation is free, else the cell's name); where it has none, the activation
    where the cell takes it (or no cell is named), else the cell's name."""
    act = cfg["activation"] if "activation" in cfg else pd.Series("", index=cfg.index)
    if "cell" not in cfg:
        out = act
    elif TAKES["activation"] in cfg:
        out = act.where(_flags(cfg, TAKES["activation"]) & act.notna(), cfg["cell"])
    else:  # results written before the job said: the cell's name
        out = cfg["cell"]
    if "model_label" in cfg:
        own = cfg["model_label"]
        out = own.where(own.notna() & (own != ""), out)
    return out.astype(object)


def labels(cfg: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.Series:
    """Labels from canonical config columns (`config_frame`).

    The cell is named where the cells differ among the rows, or where a cell's name is what
    its network is (`model`: the cell's activation is not free); the activation and the init
    (with its parameter) always, for the cells that take them (the job's `cell_takes_*`;
    all where it did not say); the cell's options (`cell_label`) where they differ among the
    rows of that cell; every other key where it varies; the keys in `exclude` never
    (excluding "init" excludes its parameter too). `T` replaces `seq_len`.
    """
    exclude = set(exclude)
    if "init" in exclude:
        exclude |= set(INIT_PARAMS)
    if "T" in cfg:
        exclude.add("seq_len")
    text = {k: format_values(cfg[k], k) for k in KEYS if k in cfg and k not in exclude}
    if "init" in text:  # the init and its parameter are one piece: "gaussian g=1.5"
        for p in INIT_PARAMS:
            if p in text:
                text["init"] = (text["init"] + " " + text.pop(p)).str.strip()
    for key, column in TAKES.items():
        if key in text:
            text[key] = text[key].where(_flags(cfg, column), "")
    cells = cfg["cell"] if "cell" in cfg else pd.Series("", index=cfg.index)
    if "cell_label" in text:  # a cell's options: where they differ among that cell's rows
        differ = text["cell_label"].groupby(cells.to_numpy()).transform("nunique") > 1
        text["cell_label"] = text["cell_label"].where(differ, "")
    named = "cell" in cfg and (cells.nunique() > 1 or "model_label" in cfg and bool(
        (cfg["model_label"] == cells).any()))
    always = {"activation", "init", "cell_label"} | ({"cell"} if named else set())
    keep = [s for k, s in text.items()
            if (k in always and (s != "").any()) or (k not in always and s.nunique() > 1)]
    return pd.Series([" / ".join(p for p in row if p) for row in zip(*keep, strict=True)]
                     if keep else "", index=cfg.index)


def config_label(df: pd.DataFrame) -> pd.Series:
    """A short label per row from its config, e.g. "tanh / gaussian g=1.5 / T=64", or
    "lstm / normal std=0.01 / forget_bias=1" beside other cells (see `labels`).

    Works on `load_sweep`, `load_metrics` and `load_summaries` frames. Jobs whose labels would
    coincide get their job name appended.

    Args:
      df: rows with config columns (and a `job` column, where jobs are to be told apart).

    Returns:
      The labels, indexed like `df`.
    """
    cfg = config_frame(df)
    ids = cfg.astype(str).groupby(list(cfg.columns), sort=False, dropna=False).ngroup()
    first = ~ids.duplicated()
    labels_of = dict(zip(ids[first], labels(cfg[first]), strict=True))
    out = ids.map(labels_of)
    if "job" in df:
        shared = df.groupby(out)["job"].transform("nunique") > 1
        out = out.where(~shared, out + " (job " + df["job"].astype(str) + ")")
    return out


def order(values: Iterable[str], names: Sequence[str]) -> list[str]:
    """The distinct `values` in the order of `names`, unknown ones last (sorted)."""
    values = {v for v in values if isinstance(v, str)}
    return [n for n in names if n in values] + sorted(values - set(names))


def ranked(values: pd.Series, ranks: pd.Series | None = None) -> list[str]:
    """The distinct (text) `values` by their rank in `ranks` (the job's `cell_order`, ...: the
    lowest first, then by name; NaN or no ranks: last, by name)."""
    if ranks is None:
        ranks = pd.Series(np.nan, index=values.index)
    r = pd.to_numeric(ranks, errors="coerce").fillna(np.inf)
    first = pd.DataFrame({"v": values, "r": r})[values.map(lambda v: isinstance(v, str))]
    best = first.groupby("v")["r"].min()
    return sorted(best.index, key=lambda v: (best[v], v))


def model_order(cfg: pd.DataFrame) -> list[str]:
    """The distinct `model`s of `cfg` in the order of their cells, then activations."""
    m = model(cfg)
    nan = pd.Series(np.nan, index=cfg.index)
    rank = (pd.to_numeric(cfg.get(ORDERS["cell"], nan), errors="coerce").fillna(np.inf) * 1000
            + pd.to_numeric(cfg.get(ORDERS["activation"], nan), errors="coerce").fillna(999))
    return ranked(m, rank.where(np.isfinite(rank)))


def jobs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job of a `load_sweep` (or `load_summaries`) frame: job, label and the
    canonical config columns, sorted by cell, activation and init (in the orders the jobs
    wrote: `cell_order`, `activation_order`, `init_order`; by name where they did not), then
    the other config keys, then job name."""
    first = df.drop_duplicates("job")
    jobs = config_frame(first).assign(job=first["job"].to_numpy(),
                                      label=config_label(first).to_numpy())
    ranks = {}
    for key, column in ORDERS.items():
        if key in jobs:
            names = ranked(jobs[key], jobs.get(column))
            ranks[f"_{key}"] = jobs[key].map({v: i for i, v in enumerate(names)})
    natural = {j: i for i, j in enumerate(job_order(jobs["job"]))}
    keys = [k for k in KEYS if k in jobs and k not in ORDERS]
    sortable = jobs[keys].astype(str).where(jobs[keys].notna(), "")  # mixed types sort as text
    numeric = {k: jobs[k] for k in keys if pd.api.types.is_numeric_dtype(jobs[k])}
    sortable = sortable.assign(**numeric)
    frame = pd.concat([pd.DataFrame(ranks), sortable.add_prefix("_k_")], axis=1)
    frame["_job"] = jobs["job"].map(natural)
    idx = frame.sort_values(list(frame.columns), kind="stable").index
    return jobs.loc[idx].reset_index(drop=True)


def predictions(summaries: pd.DataFrame) -> pd.DataFrame:
    """The theory prediction of each job's slope, and whether it applies.

    The prediction is mean field for the vanilla RNN (with a random W_hh: not `identity`),
    else the cell's own
    (`predicted_log10_slope_per_step_back`: the exact LRU profile, the uRNN's 0, the mean gate
    of the GRU and LSTM where their recurrent weights are small). It applies to the gradient of
    one loss term (`probe.loss_at=last`), and never where the job's theory says it does not
    (`headline.theory.applies` false): with the loss over all steps each step's own term keeps
    the profile flat.

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      Indexed by job: slope (log10 per step back, NaN where none), name (what it is) and
      applies (bool: the slope is finite and applies).
    """
    s = summaries.set_index("job")
    nan = pd.Series(np.nan, index=s.index)
    cfg = config_frame(s.reset_index()).set_axis(s.index)
    mf = pd.to_numeric(s.get(MF + "log10_factor_per_step", nan), errors="coerce")
    # Mean field describes a random W_hh; the identity is not one (an IRNN's W_hh is I).
    mf = mf.where(cfg.get("init", nan) != "identity")
    own = pd.to_numeric(s.get(PREDICTED, nan), errors="coerce")
    slope = mf.where(mf.notna(), own)
    name = pd.Series(np.where(mf.notna(), "mean field", ""), index=s.index)
    if PREDICTION in s:
        name = name.where(mf.notna(), s[PREDICTION].fillna("prediction").astype(str))
    else:
        name = name.where(mf.notna(), "prediction")
    loss_at = cfg.get("loss_at", nan)
    applies = (loss_at == "last") & np.isfinite(slope.astype(float))
    if APPLIES in s:
        applies &= s[APPLIES].map(lambda v: v is not False and v is not np.False_)
    return pd.DataFrame({"slope": slope.where(applies), "name": name.where(applies, ""),
                         "applies": applies.astype(bool)})


def slope_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers per job, in natural job order.

    Args:
      summaries: a `load_summaries` frame; a stack's job has a row per layer (`layer_jobs`).

    Returns:
      Columns: job, configuration, measured slope, the prediction that applies (what, its
      slope, the absolute difference |measured − predicted| in decades per step, the relative
      error |measured − predicted| / |predicted|, NaN where |predicted| < NEAR_ZERO: there
      only the absolute difference means something), Pascanu bound, top Lyapunov exponent (all
      log10 per step back; NaN where there is none), underflowed points (n_underflow), status.
    """
    summaries = layer_jobs(summaries)
    s = summaries.assign(configuration=config_label(summaries))
    s = s.set_index("job").loc[job_order(s["job"])]
    pred = predictions(summaries).reindex(s.index)
    measured = pd.to_numeric(s.get(SLOPE), errors="coerce")
    diff = (measured - pred["slope"]).abs()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / pred["slope"].abs()
    rel = rel.where(np.isfinite(rel) & (pred["slope"].abs() >= NEAR_ZERO))
    nan = pd.Series(np.nan, index=s.index)
    return pd.DataFrame({
        "job": s.index,
        "configuration": s["configuration"],
        "measured slope (log10/step back)": measured,
        "prediction": pred["name"].where(pred["applies"], np.where(
            config_frame(s).get("loss_at", nan) == "all", "none (loss at all steps)", "none")),
        "predicted (log10/step)": pred["slope"],
        "absolute difference (log10/step)": diff.where(np.isfinite(diff)),
        "relative error": rel,
        "Pascanu bound (log10/step)": pd.to_numeric(s.get(PASCANU, nan), errors="coerce"),
        "top Lyapunov (log10/step)": pd.to_numeric(s.get(LYAPUNOV, nan), errors="coerce"),
        "underflowed points": s.get("headline.n_underflow", nan),
        "status": s.get("status", nan),
    }).reset_index(drop=True)


def markdown_table(table: pd.DataFrame) -> str:
    """A markdown table: numbers to 4 significant digits, numeric columns right-aligned, a
    missing value as "—"."""
    def cell(v) -> str:
        if v is None or (np.isscalar(v) and pd.isna(v)):
            return "—"
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table]
    rows = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    return markdown.markdown_table(list(table.columns), rows, numeric)


__all__ = ["ADDING_BASELINE", "APPLIES", "CURSE", "CURSE_FROM", "KEYS", "LYAPUNOV", "MF", "NAMES",
           "NEAR_ZERO", "PASCANU", "PREDICTED", "PREDICTION", "SLOPE", "THEORY", "config_frame",
           "config_label", "curse_of_memory", "dropped_note", "fall_per_seed", "format_values",
           "job_T", "job_order", "jobs_table", "labels", "layer_jobs", "markdown_table",
           "memoryless_baseline", "model", "model_order", "options_text", "order",
           "power_law_slopes", "predictions", "profile_stats", "quantile", "ranked",
           "slope_table", "top_layer"]
