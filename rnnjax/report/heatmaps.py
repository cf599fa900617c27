"""The heatmap of ‖dL/dH_t‖ over timestep × configuration."""

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from rnnjax.report.frames import (
    dropped_note,
    job_T,
    jobs_table,
    layer_jobs,
    profile_stats,
)
from rnnjax.report.style import (
    HEATMAP_LABEL,
    MIN_DECADES,
    TIMESTEP,
    figure_style,
    note,
)


def _references(stats: pd.DataFrame, T_of: pd.Series) -> tuple[pd.Series, list[str]]:
    """Each job's reference median: its median at t = T, else its last finite one.

    Args:
      stats: `profile_stats` of the jobs (job, t, median).
      T_of: each job's T (`job_T`).

    Returns:
      The reference log10 median per job (jobs with no finite median left out), and the jobs
      whose reference is not at t = T.
    """
    fin = stats[np.isfinite(stats["median"])].sort_values("t").groupby("job").last()
    moved = fin.index[fin["t"].to_numpy() != T_of.reindex(fin.index).to_numpy()]
    return fin["median"], list(moved)


def _signed(v: float, _=None) -> str:
    """A colour-bar tick: its sign always shown ("+2", "−0.5", "0")."""
    return "0" if abs(v) < 1e-12 else f"{v:+.3g}".replace("-", "−")


@figure_style
def heatmap(df: pd.DataFrame) -> Figure:
    """How ‖dL/dH_t‖ at initialization changes going back from t = T, over timestep ×
    configuration.

    A cell's colour is the median over seeds of log10 ‖dL/dH_t‖ minus that median at the job's
    last step t = T (where the loss is): white where the gradient is as large as at t = T (a
    flat profile is white throughout), blue where it is smaller (vanishing going back), red
    where larger (exploding). The scale is symmetric about 0, so a colour means the same
    number of decades on either side, and spans at least `MIN_DECADES` in all, so a flat
    profile's noise stays pale. A job whose median at t = T is not finite is drawn relative to
    its last finite median, and the figure says so.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.

    Returns:
      The figure: one row per job (each layer of a stack a row: `layer_jobs`), cells whose
      median underflowed to 0 in black, those that overflowed (or are NaN) in gold, steps a
      shorter sequence does not have hatched.
    """
    d = layer_jobs(df[df["train_step"] == 0])
    jobs = jobs_table(d)
    stats = profile_stats(d)
    m = stats["median"]
    stats["state"] = np.select([np.isfinite(m), np.isneginf(m)], [0.0, 1.0], 2.0)
    reference, moved = _references(stats, job_T(d))
    stats["relative"] = m - stats["job"].map(reference)
    relative = stats.pivot(index="job", columns="t", values="relative").reindex(jobs["job"])
    state = stats.pivot(index="job", columns="t", values="state").reindex(jobs["job"])
    relative.index = state.index = jobs["label"]
    finite = relative.where(state == 0)
    reach = np.nanmax(np.abs(finite.to_numpy())) if finite.notna().any().any() else 0.0
    vmax = max(float(reach), MIN_DECADES / 2)  # the same decades per colour on both sides

    fig = Figure(figsize=(12, 4.4 + 0.32 * len(jobs)), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(finite, cmap="RdBu_r", vmin=-vmax, vmax=vmax, ax=ax, xticklabels="auto",
                yticklabels=True, cbar_kws={"orientation": "horizontal", "aspect": 50,
                                            "pad": 0.02})
    cbar = ax.collections[0].colorbar
    cbar.set_label(HEATMAP_LABEL, fontsize="small")
    # 0 and both sides alike, as many ticks as the bar's length has room for
    cbar.locator = MaxNLocator("auto", symmetric=True, steps=[1, 2, 5, 10])
    cbar.formatter = FuncFormatter(_signed)
    if (state > 0).any().any():
        sns.heatmap(state.where(state > 0), cmap=ListedColormap(["black", "gold"]), vmin=1,
                    vmax=2, cbar=False, ax=ax, xticklabels="auto", yticklabels=True)
    handles = [Patch(color=color, label=label) for value, color, label in (
        (1, "black", "median underflowed to 0 (log10 = −∞)"),
        (2, "gold", "median overflowed to inf, or NaN")) if (state == value).any().any()]
    if state.isna().any().any():  # the hatched background shows through
        ax.patch.set(hatch="//", edgecolor="lightgray")
        handles.append(Patch(facecolor="white", edgecolor="lightgray", hatch="//",
                             label="no such step (t > T)"))
    if handles:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3,
                  frameon=False, fontsize=9)
    _timestep_ticks(ax, finite.columns)
    ax.set_xlabel(TIMESTEP + " (1 … T)")
    ax.set_ylabel("configuration")
    fig.suptitle("Gradient norm ‖dL/dH_t‖ at initialization, by timestep and configuration,\n"
                 "relative to the last step t = T: blue smaller (vanishing going back), red "
                 "larger (exploding)", wrap=True)
    label_of = dict(zip(jobs["job"], jobs["label"], strict=True))
    notes = [dropped_note(stats), f"Relative to their last finite median (the median at t = T "
             f"is not finite): {', '.join(label_of[j] for j in moved)}." if moved else ""]
    note(fig, "\n".join(n for n in notes if n))
    return fig


HEATMAP_TICKS = 16  # the most timestep labels under a heatmap (seaborn's "auto" ran them together)


def _timestep_ticks(ax: Axes, timesteps: Sequence[int]) -> None:
    """Labels a heatmap's columns (timesteps) at round steps only (1, 2, 5, 10, 20, ... apart),
    at most HEATMAP_TICKS of them, horizontally."""
    timesteps = list(timesteps)
    step = next(s for k in range(10) for s in (10**k, 2 * 10**k, 5 * 10**k)
                if len(timesteps) / s <= HEATMAP_TICKS)
    at = [i for i, t in enumerate(timesteps) if t == 1 or t % step == 0]
    ax.set_xticks([i + 0.5 for i in at], [str(timesteps[i]) for i in at], rotation=0)
