"""The tables behind the figures and reports of a run or sweep: config columns under canonical
names, labels, job order, quantiles over seeds, the predictions that apply, slope tables and
the training baselines.

pandas and numpy only: `rnnjax.report.plots` draws from these frames, `rnnjax.report.build` and
`rnnjax.report.reproduce` print them. They take the frames of `rnnjax.app.results` (`load_sweep`,
`load_summaries`, `load_metrics`).

Quantiles over seeds are taken of log10 grad_norm with an underflowed norm (0) as -inf and an
overflowed one as +inf: order statistics, so a seed whose norm underflowed still counts.
"""

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from rnnjax.core.cells import ACTIVATIONS, CELLS
from rnnjax.core.init import INITS

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


def _flag(yes: str, no: str) -> Callable[[Any], str]:
    return lambda v: yes if bool(v) else no


# Config keys in label order: canonical name (the column of load_sweep / load_metrics frames)
# -> where it is in the config and how one value reads.
KEYS: dict[str, Key] = {
    "cell": Key("cell.name", _fmt("{}")),
    "activation": Key("activation.name", _fmt("{}")),
    "init": Key("init.name", _fmt("{}")),
    "init_std": Key("init.std", _fmt("std={:g}")),
    "init_gain": Key("init.gain", _fmt("g={:g}")),
    "init_radius": Key("init.radius", _fmt("ρ={:g}")),
    "forget_bias": Key("cell.forget_bias", _fmt("forget bias {:g}")),
    "peephole": Key("cell.peephole", _flag("peephole", "no peephole")),
    "r_min": Key("cell.r_min", _fmt("r_min={:g}")),
    "r_max": Key("cell.r_max", _fmt("r_max={:g}")),
    "max_phase": Key("cell.max_phase", _fmt("max phase {:.3g}")),
    "normalize": Key("cell.normalize", _flag("normalized", "not normalized")),
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
CELL_OPTIONS = ("forget_bias", "peephole", "ring", "max_phase", "normalize")
MISSING = {"clip": "no clip"}  # what a missing value says; other keys then say nothing

# Legend titles of the columns a figure can colour by.
NAMES = {
    "T": "timesteps T",
    "seq_len": "sequence length",
    "init_gain": "gain g",
    "init_std": "init std",
    "init_radius": "spectral radius ρ",
    "init": "initialization",
    "cell": "cell",
    "hidden_size": "hidden units H",
    "batch_size": "batch size B",
    "task": "task",
    "loss_at": "loss at",
    "dtype": "dtype",
}

ADDING_BASELINE = 1 / 6  # the adding problem's MSE of always predicting 1
COPY_SYMBOLS = 8  # the copy task's data symbols, each equally likely
COPY_LENGTH = 10  # symbols to remember


def job_order(jobs: Iterable[str]) -> list[str]:
    """The distinct job names in natural order ("2" before "10", "g=1.25" before "g=1.5")."""
    def key(job: str) -> list[tuple[int, float, str]]:
        parts = re.split(r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)", job)
        return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]

    return sorted({str(j) for j in jobs}, key=key)


def _column(df: pd.DataFrame, name: str) -> str | None:
    """The column of `df` that holds config key `name`: its canonical name, its config path
    (dotted or with underscores) or the path under "config." (a load_summaries frame)."""
    path = KEYS[name].path
    for col in (name, path, path.replace(".", "_"), "config." + path):
        if col in df:
            return col
    return None


def config_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The config columns of `df` under their canonical names (`cell`, `T`, `init_gain`,
    `clip`, ...), from a `load_sweep` / `load_metrics` frame or a `load_summaries` one."""
    cols = {}
    for name in KEYS:
        col = _column(df, name)
        if col is not None:
            cols[name] = df[col]
    return pd.DataFrame(cols, index=df.index)


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


def takes(cell: str, what: str) -> bool:
    """Whether `cell` uses the config's `activation` or `init` (a cell that follows its paper
    accepts the default and ignores it)."""
    spec = CELLS.get(cell)
    return spec is None or getattr(spec, f"{what}s") is None


def labels(cfg: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.Series:
    """Labels from canonical config columns (`config_frame`).

    The cell is named where any row is not the vanilla RNN; the activation and the init (with
    its parameter) always, for the cells that use them; a cell's option where it varies among
    the rows of the cells that take it; every other key where it varies; the keys in `exclude`
    never (excluding "init" excludes its parameter too). `T` replaces `seq_len`.
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
    if "r_min" in text and "r_max" in text:  # the LRU's ring: r=0.9, or |λ| in [0.9, 0.999]
        lo, hi = cfg["r_min"].astype(float), cfg["r_max"].astype(float)
        lo_s, hi_s = lo.map("{:g}".format), hi.map("{:g}".format)  # object: "nan" where missing
        ring = ("|λ| in [" + lo_s + ", " + hi_s + "]").where(lo != hi, "r=" + lo_s)
        ring = ring.where(lo.notna() & hi.notna(), "")  # not an LRU (or no ring): no text
        text = {("ring" if k == "r_min" else k): (ring if k == "r_min" else v)
                for k, v in text.items() if k != "r_max"}
    cells = cfg["cell"] if "cell" in cfg else pd.Series("vanilla", index=cfg.index)
    for key in ("activation", "init"):
        if key in text:
            text[key] = text[key].where(cells.map(lambda c, key=key: takes(c, key)), "")
    always = {"activation", "init"} | ({"cell"} if (cells != "vanilla").any() else set())

    def varies(k: str, s: pd.Series) -> bool:  # a cell's option: among the cells that take it
        return (s[s != ""] if k in CELL_OPTIONS else s).nunique() > 1

    keep = [s for k, s in text.items() if (k in always and (s != "").any()) or varies(k, s)]
    return pd.Series([" / ".join(p for p in row if p) for row in zip(*keep, strict=True)]
                     if keep else "", index=cfg.index)


def config_label(df: pd.DataFrame) -> pd.Series:
    """A short label per row from its config, e.g. "tanh / gaussian g=1.5 / T=64", or
    "lstm / normal std=0.01 / forget bias 1" beside other cells (see `labels`).

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


def quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Row-wise q-quantile (numpy's linear interpolation) ignoring NaN, where -inf and inf are
    values: an interpolation that touches -inf gives -inf, one that touches inf gives inf, one
    that touches both NaN."""
    s = np.sort(values, axis=1)  # NaN last
    pos = np.maximum((~np.isnan(values)).sum(axis=1) - 1, 0) * q
    lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    a = np.take_along_axis(s, lo[:, None], axis=1)[:, 0]
    b = np.take_along_axis(s, hi[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * (pos - lo)
    out = np.where(np.isneginf(a) & ~np.isposinf(b), -np.inf, out)
    return np.where(np.isposinf(b) & ~np.isneginf(a), np.inf, out)


def profile_stats(df: pd.DataFrame, by: Sequence[str] = ("job",), column: str = "grad_norm",
                  quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> pd.DataFrame:
    """Quantiles over seeds of log10 of `column` (grad_norm), per (*by, t).

    Args:
      df: a `load_sweep` frame with one row per (*by, t, seed).
      by: the columns that name one profile.
      column: the norm ("grad_norm", "cell_grad_norm", ...).
      quantiles: which; 0.25, 0.5 and 0.75 are named q25, median and q75, others q<100 q>.

    Returns:
      One row per (*by, t): those columns, t, and the quantiles (log10; -inf where the quantile
      underflowed to 0, inf where it overflowed, NaN where undefined).
    """
    keys = [*by, "t"]
    with np.errstate(divide="ignore"):
        lg = np.log10(df[column].to_numpy(np.float64))
    wide = df[[*keys, "seed"]].assign(lg=lg).set_index([*keys, "seed"])["lg"].unstack("seed")
    out = wide.index.to_frame(index=False)
    for q in quantiles:
        name = {0.25: "q25", 0.5: "median", 0.75: "q75"}.get(q, f"q{100 * q:g}")
        out[name] = quantile(wide.to_numpy(), q)
    return out


def dropped_note(stats: pd.DataFrame, what: str = "(configuration, t)", of: str = "") -> str:
    """How many medians of `profile_stats` no log scale can show, and why ("" when none); `of`
    names the line they belong to, where a figure notes several."""
    m = stats["median"].to_numpy()
    under = int(np.isneginf(m).sum())
    other = int((~np.isfinite(m)).sum()) - under
    parts = [text for n, text in ((under, f"{under} underflowed to 0 (log10 = −∞)"),
                                  (other, f"{other} overflowed to inf or are NaN")) if n]
    if not parts:
        return ""
    return (f"Not plotted{f' ({of})' if of else ''}: of {len(m)} {what} medians over seeds, "
            + " and ".join(parts) + ".")


def job_T(df: pd.DataFrame) -> pd.Series:
    """Each job's number of timesteps T, indexed by job: the `T` column (seq_len, or
    seq_len + 20 for task=copy), or the largest t in frames written before it existed."""
    return df.groupby("job")["T" if "T" in df else "t"].max()


def order(values: Iterable[str], names: Sequence[str]) -> list[str]:
    """The distinct `values` in the order of `names`, unknown ones last (sorted)."""
    values = {v for v in values if isinstance(v, str)}
    return [n for n in names if n in values] + sorted(values - set(names))


def jobs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job of a `load_sweep` (or `load_summaries`) frame: job, label and the
    canonical config columns, sorted by cell, activation and init (in the orders of `CELLS`,
    `ACTIVATIONS` and `INITS`), then the other config keys, then job name."""
    first = df.drop_duplicates("job")
    jobs = config_frame(first).assign(job=first["job"].to_numpy(),
                                      label=config_label(first).to_numpy())
    if "cell" not in jobs:
        jobs["cell"] = "vanilla"
    ranks = {}
    for key, names in (("cell", list(CELLS)), ("activation", list(ACTIVATIONS)),
                       ("init", list(INITS))):
        if key in jobs:
            ranks[f"_{key}"] = jobs[key].map(
                {v: i for i, v in enumerate(order(jobs[key], names))})
    natural = {j: i for i, j in enumerate(job_order(jobs["job"]))}
    keys = [k for k in KEYS if k in jobs and k not in ("cell", "activation", "init")]
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
      summaries: a `load_summaries` frame.

    Returns:
      Columns: job, configuration, measured slope, the prediction that applies (what, its
      slope, the absolute difference |measured − predicted| in decades per step, the relative
      error |measured − predicted| / |predicted|, NaN where |predicted| < NEAR_ZERO: there
      only the absolute difference means something), Pascanu bound, top Lyapunov exponent (all
      log10 per step back; NaN where there is none), underflowed points (n_underflow), status.
    """
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
    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def memoryless_baseline(task: str, T: int, loss_at: str = "all") -> float | None:
    """The loss of the best predictor that remembers nothing, or None where the task has none.

    adding: MSE 1/6, always predicting 1 (E[(u1 + u2 - 1)^2] = 2/12). copy (T = seq_len + 20
    steps): blanks where blanks are due and a uniform guess among the 8 symbols at each of the
    last 10 steps, cross-entropy 10 log 8 / T averaged over all steps (log 8 at the last step).
    """
    if task == "adding":
        return ADDING_BASELINE
    if task == "copy":
        guess = math.log(COPY_SYMBOLS)
        return guess if loss_at == "last" else COPY_LENGTH * guess / T
    return None


def fall_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """How many decades ‖dL/dH_t‖ falls from t = T back to t = 1, per job, training step and
    seed: log10 grad_norm at T minus at 1 (inf where it underflowed to 0 at t = 1, NaN where
    either end is not finite otherwise).

    Args:
      df: a `load_sweep` frame.

    Returns:
      Columns job, train_step, seed, fall.
    """
    ends = df[(df["t"] == 1) | (df["t"] == df.groupby("job")["t"].transform("max"))]
    with np.errstate(divide="ignore"):
        lg = np.log10(ends["grad_norm"].to_numpy(np.float64))
    wide = (ends[["job", "train_step", "seed"]].assign(end=np.where(ends["t"] == 1, "first",
                                                                     "last"), lg=lg)
            .pivot_table(index=["job", "train_step", "seed"], columns="end", values="lg",
                         aggfunc="first"))
    with np.errstate(invalid="ignore"):
        fall = wide["last"] - wide["first"]
    return fall.rename("fall").reset_index()


# The curse of memory (Zucchet & Orvieto 2024): the power of 1/(1 - r) with which each
# gradient grows for i.i.d. drives, without and with the LRU's normalization (README: the LRU).
CURSE = {"lambda_grad_norm": ("‖dL/dλ‖", {False: 1.5, True: 1.0}),
         "nu_log_grad_norm": ("‖dL/dν_log‖", {False: 0.5, True: 0.0})}
CURSE_FROM = 10.0  # fit the power law where 1/(1 - r) >= this (the asymptotic regime)


def curse_of_memory(summaries: pd.DataFrame) -> pd.DataFrame:
    """The LRU's gradients against its memory 1/(1 - r), with and without normalization.

    Args:
      summaries: a `load_summaries` frame of `cell=lru` jobs with r_min = r_max = r.

    Returns:
      One row per job: job, r, memory (1/(1 - r)), normalize, and each quantity of `CURSE`
      (median over seeds).
    """
    s = summaries[summaries[THEORY + "inverse_one_minus_r"].notna()]
    return pd.DataFrame({
        "job": s["job"],
        "r": s[THEORY + "r"].astype(float),
        "memory": s[THEORY + "inverse_one_minus_r"].astype(float),
        "normalize": config_frame(s)["normalize"].astype(bool),
        **{q: s[THEORY + q].astype(float) for q in CURSE},
    }).sort_values(["normalize", "memory"]).reset_index(drop=True)


def power_law_slopes(curse: pd.DataFrame, start: float = CURSE_FROM) -> pd.DataFrame:
    """The log-log least-squares slope of each `CURSE` quantity against 1/(1 - r), from
    1/(1 - r) = `start` on, per normalization, beside the predicted power.

    Returns:
      Columns quantity, normalize, measured, predicted, points (how many jobs were fitted).
    """
    rows = []
    for (normalize, g), q in ((ng, q) for ng in curse.groupby("normalize") for q in CURSE):
        g = g[(g["memory"] >= start) & (g[q] > 0)]
        slope = (float(np.polyfit(np.log10(g["memory"]), np.log10(g[q]), 1)[0])
                 if len(g) >= 2 else math.nan)
        rows.append({"quantity": q, "normalize": bool(normalize), "measured": slope,
                     "predicted": CURSE[q][1][bool(normalize)], "points": len(g)})
    return pd.DataFrame(rows)


__all__ = ["ADDING_BASELINE", "APPLIES", "CURSE", "KEYS", "LYAPUNOV", "MF", "NAMES", "NEAR_ZERO",
           "PASCANU", "PREDICTED", "PREDICTION", "SLOPE", "THEORY", "config_frame",
           "config_label", "curse_of_memory", "dropped_note", "fall_per_seed", "format_values",
           "job_T", "job_order", "jobs_table", "labels", "markdown_table",
           "memoryless_baseline", "order", "power_law_slopes", "predictions", "profile_stats",
           "quantile", "slope_table", "takes"]
