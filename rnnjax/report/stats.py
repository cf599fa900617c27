"""Statistics over seeds and jobs behind the figures and tables: quantiles of log10 norms,
what a log scale leaves out, how far a profile falls, and the curse of memory's power laws.

pandas and numpy only. Quantiles over seeds are taken of log10 grad_norm with an underflowed
norm (0) as -inf and an overflowed one as +inf: order statistics, so a seed whose norm
underflowed still counts. `quantile` is the one median (and quantile) of the report.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

THEORY = "headline.theory."


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
      df: a `load_sweep` frame with one row per (*by, t, seed), or per (*by, layer, t, seed):
        the `layer` column, where `df` has it, names a profile too (one per layer of a stack).
      by: the columns that name one profile.
      column: the norm ("grad_norm", "cell_grad_norm", ...).
      quantiles: which; 0.25, 0.5 and 0.75 are named q25, median and q75, others q<100 q>.

    Returns:
      One row per (*by, [layer,] t): those columns, t, and the quantiles (log10; -inf where the
      quantile underflowed to 0, inf where it overflowed, NaN where undefined).
    """
    keys = [*by, *(["layer"] if "layer" in df and "layer" not in by else []), "t"]
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


def fall_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """How many decades ‖dL/dH_t‖ falls from t = T back to t = 1, per job, training step and
    seed: log10 grad_norm at T minus at 1 (inf where it underflowed to 0 at t = 1, NaN where
    either end is not finite otherwise).

    Args:
      df: a `load_sweep` frame.

    Returns:
      Columns job, train_step, (layer, where `df` has it,) seed, fall.
    """
    ends = df[(df["t"] == 1) | (df["t"] == df.groupby("job")["t"].transform("max"))]
    with np.errstate(divide="ignore"):
        lg = np.log10(ends["grad_norm"].to_numpy(np.float64))
    index = ["job", "train_step", *(["layer"] if "layer" in df else []), "seed"]
    wide = (ends[index].assign(end=np.where(ends["t"] == 1, "first", "last"), lg=lg)
            .pivot_table(index=index, columns="end", values="lg", aggfunc="first"))
    with np.errstate(invalid="ignore"):
        fall = wide["last"] - wide["first"]
    return fall.rename("fall").reset_index()


# The curse of memory (Zucchet & Orvieto 2024): the power of 1/(1 - r) with which each
# gradient grows for i.i.d. drives, without and with the LRU's normalization (docs/cells.md:
# the LRU).
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
        "normalize": cell_option(s, "normalize").astype(bool),
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




# What a stack's summary says of each layer (`headline.layers.<l>.<key>`, as summary.json's
# headline of the top layer says it), that `layer_jobs` moves into each layer's own row
LAYER_KEYS = ("log10_slope_per_step_back", "grad_norm_t1_median", "grad_norm_tT_median",
              "n_underflow")


def layer_jobs(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each layer of a stack (`model.layers` > 1) as a job of its own, "JOB[layer=l]"
    (l = 1 at the input), so that every table and figure that draws one profile per job draws
    one per layer, and `layer` (a label key) tells them apart.

    Args:
      df: a `load_sweep` frame (its `layer` column), or a `load_summaries` frame: a stack's row
        becomes one row per layer, with `layer` and that layer's numbers in place of the
        headline's (LAYER_KEYS: slope, norms at t = 1 and T, underflows).

    Returns:
      `df` itself where no job has more than one layer, else a new frame.
    """
    if "job" not in df:
        return df
    if "layer" in df:
        many = df.groupby("job")["layer"].transform("nunique") > 1
        if not many.any():
            return df
        job = df["job"].astype(str) + "[layer=" + df["layer"].astype(str) + "]"
        return df.assign(job=df["job"].where(~many, job))
    column = next((c for c in ("model_layers", "config.model.layers") if c in df), None)
    layers = (pd.to_numeric(df[column], errors="coerce").fillna(1).astype(int)
              if column is not None else pd.Series(1, index=df.index))
    if (layers <= 1).all():
        return df
    out = df.loc[df.index.repeat(layers)].reset_index(drop=True)
    L = np.repeat(layers.to_numpy(), layers.to_numpy())
    layer = out.groupby(np.repeat(np.arange(len(df)), layers.to_numpy())).cumcount() + 1
    stacked = L > 1
    out["layer"] = layer.to_numpy()
    out["job"] = out["job"].where(~stacked, out["job"].astype(str) + "[layer="
                                  + layer.astype(str) + "]")
    for l in range(1, int(L.max()) + 1):
        mask = stacked & (out["layer"] == l)
        for key in LAYER_KEYS:
            own = f"headline.layers.{l}.{key}"
            if own in out and f"headline.{key}" in out:
                out.loc[mask, f"headline.{key}"] = out.loc[mask, own]
    return out


def top_layer(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a `load_sweep` frame of each job's top layer (a stack's next to the loss,
    whose profile its headline gives; a cell's only layer)."""
    if "layer" not in df:
        return df
    top = df.groupby("job")["layer"].transform("max") if "job" in df else df["layer"].max()
    return df[df["layer"] == top]


def cell_option(df: pd.DataFrame, option: str) -> pd.Series:
    """The column of `df` holding the cell option `option` (`cell_X` of load_summaries and
    load_sweep frames, `config.cell.X` or `cell.X`); NaN where none does."""
    for col in (f"cell_{option}", f"config.cell.{option}", f"cell.{option}"):
        if col in df:
            return df[col]
    return pd.Series(np.nan, index=df.index)


__all__ = ["CURSE", "CURSE_FROM", "LAYER_KEYS", "cell_option", "curse_of_memory",
           "dropped_note", "fall_per_seed", "job_T", "layer_jobs", "power_law_slopes",
           "profile_stats", "quantile", "top_layer"]
