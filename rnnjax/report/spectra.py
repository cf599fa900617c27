"""Lyapunov spectra in the report (fig12_lyapunov_spectrum), from the jobs' lyapunov.parquet
(`load_lyapunov`; the median over seeds of each exponent, log10 per step): the vanilla RNN's
across gains and activations beside its measured gradient slope, with mean field's edge of
chaos, and the other cells' spectra for comparison. Reads files only."""

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rnnjax.core.meanfield import mean_field
from rnnjax.report import frames
from rnnjax.report.frames import MF
from rnnjax.report.points import _critical_gain, _summary_points
from rnnjax.report.style import categorical, figure_style

YLABEL = "Lyapunov exponent λᵢ / ln 10 (decades/step)"
CLIP = -3.0  # the lowest exponent drawn in the vanilla RNN's panels (decades/step)


def spectra_at_init(lyapunov: pd.DataFrame) -> pd.DataFrame:
    """The spectra at initialization (train_step 0) as one row per (job, init gain, i): the
    median over seeds of each exponent (log10 per step), its place `fraction` = i / k, the
    job's cell, activation and gain."""
    at0 = lyapunov[lyapunov["train_step"] == 0].copy()
    at0["init_gain"] = pd.to_numeric(at0.get("init_gain"), errors="coerce")
    keys = ["job", "cell", "activation", "init_gain", "i"]
    out = (at0.groupby(keys, dropna=False, sort=False)["lyapunov_log10_per_step"].median()
           .rename("exponent").reset_index())
    k = out.groupby(["job", "init_gain"], dropna=False)["i"].transform("max")
    out["fraction"] = out["i"] / k
    return out


@figure_style
def lyapunov_spectra(summaries: pd.DataFrame, lyapunov: pd.DataFrame) -> Figure:
    """Top: the vanilla RNN's spectrum (every exponent against its place i / k) at each gain
    of W_hh ~ N(0, g²/H), one panel per activation. Bottom left: its top exponent and
    measured slope against the gain, with mean field's critical gain (chi_1 = 1) dotted.
    Bottom right: the other cells' spectra.

    Args:
      summaries: a `load_summaries` frame (a job whose init gain is a list has a row per gain).
      lyapunov: its jobs' `load_lyapunov` frame.
    """
    rows = spectra_at_init(lyapunov)
    gained = rows[np.isfinite(rows["init_gain"])]  # a random W_hh: mean field's networks
    others = rows[~np.isfinite(rows["init_gain"])]
    acts = frames.ranked(gained["activation"]) if len(gained) else []
    fig = Figure(figsize=(6 * max(len(acts), 2), 11), layout="constrained")
    grid = fig.add_gridspec(2, max(len(acts), 2))
    gains = sorted(gained["init_gain"].unique())
    palette = dict(zip(gains, sns.color_palette("viridis", len(gains)), strict=True))
    for j, act in enumerate(acts):
        ax = fig.add_subplot(grid[0, j])
        sns.lineplot(data=gained[gained["activation"] == act], x="fraction", y="exponent",
                     hue="init_gain", palette=palette, legend="full", marker=".", ax=ax)
        ax.axhline(0, color="black", lw=0.8, ls="-.")
        ax.set_title(f"{act}, W_hh ~ N(0, g²/H)")
        ax.set_xlabel("place i / k of the exponent (k = H: every one)")
        ax.set_ylabel(YLABEL if j == 0 else "")
        low = gained.loc[gained["activation"] == act, "exponent"]
        low = low[np.isfinite(low)]
        if len(low) and low.min() < CLIP:  # a dead ReLU's directions: far below, or -inf
            ax.set_ylim(CLIP, None)
            ax.annotate(f"exponents below {CLIP} not shown", (0.02, 0.02),
                        xycoords="axes fraction", fontsize="small", color="gray")
        ax.legend(title="gain g", loc="lower left", bbox_to_anchor=(0, 0.06), frameon=False,
                  fontsize="small")
    fig.suptitle("Lyapunov spectra of the input-driven hidden dynamics at initialization "
                 "(median over seeds)")
    ax = fig.add_subplot(grid[1, 0])
    _top_against_gain(ax, summaries, acts)
    ax = fig.add_subplot(grid[1, 1:])
    models = frames.ranked(others["cell"]) if len(others) else []
    if models:
        sns.lineplot(data=others, x="fraction", y="exponent", hue="cell", hue_order=models,
                     palette=categorical(models), marker=".", ax=ax)
        ax.legend(title="cell (its own default init)", loc="upper left",
                  bbox_to_anchor=(1.01, 1), frameon=False)
    ax.axhline(0, color="black", lw=0.8, ls="-.")
    ax.set_title("Gated and diagonal cells: their spectra")
    ax.set_xlabel("place i / k of the exponent")
    ax.set_ylabel(YLABEL)
    return fig


def _top_against_gain(ax, summaries: pd.DataFrame, acts: list[str]) -> None:
    """The vanilla RNN's top exponent (line) and measured slope (points) against the gain, per
    activation, with mean field's critical gain dotted where the gains bracket it."""
    data = _summary_points(summaries)
    data = data[np.isfinite(data["gain"])].sort_values("gain")
    palette = categorical(acts)
    critical = []
    for act in acts:
        d = data[data["activation"] == act]
        ax.plot(d["gain"], d["lyapunov"], color=palette[act], lw=1.5, label=f"{act}: λ₁ / ln 10")
        ax.scatter(d["gain"], d["slope"], color=palette[act], s=40, zorder=3)
        grid = np.linspace(d["gain"].min(), d["gain"].max(), 201)
        iv = float(pd.to_numeric(summaries.loc[d.index, MF + "input_var"]).median())
        bv = float(pd.to_numeric(summaries.loc[d.index, MF + "bias_var"]).median())
        gc = _critical_gain(grid, np.array([mean_field(act, g, iv, bv)["chi1"] for g in grid]))
        if gc is not None:
            ax.axvline(gc, color=palette[act], ls=":", lw=1.5)
            critical.append(f"{act} {gc:.3g}")
    ax.axhline(0, color="black", lw=0.8, ls="-.")
    extra = [Line2D([], [], color="gray", marker="o", ls="none",
                    label="measured gradient slope\n(median over seeds)")]
    if critical:
        extra.append(Line2D([], [], color="gray", ls=":",
                            label="mean field's edge of chaos\n(χ₁ = 1): " + ", ".join(critical)))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              frameon=False, fontsize="small", ncols=2)
    ax.set_xlabel("gain g = √(H · mean W_hh²)")
    ax.set_ylabel("decades/step")
    ax.set_title("Top exponent and gradient slope against the gain")


__all__ = ["lyapunov_spectra", "spectra_at_init"]
