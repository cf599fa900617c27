"""Figures of one point per job, from the summaries: the phase diagram against the gain, the
slope against the top Lyapunov exponent, and the curse of memory."""


import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rnnjax.core.meanfield import mean_field
from rnnjax.report import frames
from rnnjax.report.frames import (
    LYAPUNOV,
    MF,
    SLOPE,
    config_label,
    predictions,
)
from rnnjax.report.style import (
    OKABE_ITO,
    Trimmed,
    categorical,
    coinciding,
    figure_style,
    log_y,
    note,
    note_points,
)


def _critical_gain(grid: np.ndarray, chi: np.ndarray) -> float | None:
    """The gain where chi_1 first crosses 1 on the grid (linear in log chi_1 between the two
    grid points around it); None when it does not cross."""
    with np.errstate(divide="ignore"):
        x = np.log(chi)
    cross = np.nonzero(np.sign(x[1:]) != np.sign(x[:-1]))[0]
    if not cross.size:
        return None
    i = cross[0]
    return float(grid[i] + (0 - x[i]) * (grid[i + 1] - grid[i]) / (x[i + 1] - x[i]))


def _summary_points(summaries: pd.DataFrame) -> pd.DataFrame:
    nan = pd.Series(np.nan, index=summaries.index)
    cfg = frames.config_frame(summaries)
    pred = predictions(summaries).reindex(summaries["job"])
    return pd.DataFrame({
        "job": summaries["job"],
        "label": config_label(summaries),
        "model": frames.model(cfg),
        "activation": cfg.get("activation", nan),
        "init": cfg.get("init", nan),
        "slope": pd.to_numeric(summaries.get(SLOPE, nan), errors="coerce"),
        "gain": pd.to_numeric(summaries.get(MF + "gain", nan), errors="coerce"),
        "input_var": pd.to_numeric(summaries.get(MF + "input_var", nan), errors="coerce"),
        "bias_var": pd.to_numeric(summaries.get(MF + "bias_var", nan), errors="coerce"),
        "lyapunov": pd.to_numeric(summaries.get(LYAPUNOV, nan), errors="coerce"),
        "last": (cfg.get("loss_at", nan) == "last").to_numpy(),
        "applies": pred["applies"].to_numpy(),
    })


@figure_style
def phase_diagram(summaries: pd.DataFrame) -> Figure:
    """The measured per-step factor of ||dL/dH_t|| against the gain, beside mean-field theory.

    Points: 10**slope per vanilla-RNN job whose prediction applies (the measured slope, median
    over seeds) against its effective gain g = sqrt(H mean W_hh^2). Lines: the mean-field
    factor sqrt(chi_1(g)) per activation, with the median input and bias variance of that
    activation's jobs. Dotted: the critical gain (chi_1 = 1) where it lies in the plotted
    range.

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      The figure.
    """
    data = _summary_points(summaries)
    data = data[np.isfinite(data["gain"])]  # the vanilla RNN's jobs
    data["factor"] = 10.0 ** data["slope"]
    ok = data["applies"] & np.isfinite(data["factor"]) & (data["factor"] > 0)
    acts = frames.ranked(data["activation"], frames.config_frame(summaries).reindex(
        data.index).get("activation_order"))
    palette = categorical(acts)
    gains = data["gain"]  # theory also where the slope is not
    grid = np.linspace(0.8 * gains.min(), 1.2 * gains.max(), 121) if len(gains) else []

    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    curves, critical = [], []
    for act in acts:
        jobs = data[data["activation"] == act]
        iv, bv = float(jobs["input_var"].median()), float(jobs["bias_var"].median())
        chi = np.array([mean_field(act, g, iv, bv)["chi1"] for g in grid])
        curves.append(pd.DataFrame({"activation": act, "gain": grid, "factor": np.sqrt(chi)}))
        gc = _critical_gain(grid, chi)
        if gc is not None:
            ax.axvline(gc, color=palette[act], ls=":", lw=1.5)
            critical.append(f"{act} {gc:.3g}")
    if curves:
        sns.lineplot(data=pd.concat(curves), x="gain", y="factor", hue="activation",
                     palette=palette, legend=False, ax=ax)
    sns.scatterplot(data=data[ok], x="gain",
                    y="factor", hue="activation", hue_order=acts, palette=palette,
                    style="init" if data["init"].nunique() > 1 else None, s=70, zorder=3,
                    ax=ax)
    ax.axhline(1.0, color="black", lw=0.8, ls="-.")
    log_y(ax)
    handles, names = ax.get_legend_handles_labels()
    extra = [Line2D([], [], color="gray", marker="o", ls="none",
                    label="measured: 10^slope (median over seeds)"),
             Line2D([], [], color="gray", label="mean field: √χ₁(g)"),
             Line2D([], [], color="black", lw=0.8, ls="-.",
                    label="factor 1: neither vanishing\nnor exploding")]
    if critical:
        extra.append(Line2D([], [], color="gray", ls=":",
                            label="critical gain (χ₁ = 1):\n" + ", ".join(critical)))
    ax.legend(handles=handles + extra, labels=names + [h.get_label() for h in extra],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel("gain g = √(H · mean W_hh²) (dimensionless)")
    ax.set_ylabel("factor of ‖dL/dH_t‖ per step back (×/step)")
    ax.set_title("Vanishing (< 1) or exploding (> 1): measured per-step factor against gain,\n"
                 "with the mean-field prediction")
    note_points(fig, ax, data, ok, ("gain", "factor"),
                "with no finite measured slope, or whose loss is not at the last step")
    return fig


@figure_style
def slope_vs_lyapunov(summaries: pd.DataFrame) -> Figure:
    """The measured slope against the top Lyapunov exponent (both log10 per step), with y = x,
    for the jobs whose loss is at the last step (the gradient of one loss term).

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      The figure.
    """
    data = _summary_points(summaries)
    ok = data["last"] & np.isfinite(data["slope"]) & np.isfinite(data["lyapunov"])
    models = frames.model_order(frames.config_frame(summaries))
    fig = Figure(figsize=(10, 6), layout="constrained")  # room for the x tick labels
    ax = fig.subplots()
    sns.scatterplot(data=data[ok], x="slope", y="lyapunov", hue="model", hue_order=models,
                    palette=categorical(models),
                    style="init" if data["init"].nunique() > 1 else None, s=70, zorder=3,
                    ax=ax)
    both = data.loc[ok, ["slope", "lyapunov"]].to_numpy()
    lo, hi = (both.min(), both.max()) if both.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo) + 1e-3
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", ls="--", lw=1,
            label="y = x: the gradient changes\nat the top exponent's rate")
    ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
    ax.axvline(0, color="lightgray", lw=0.8, zorder=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    # Few, short x tick labels: a narrow range's long ones ("−0.0125", 11 of them) ran together.
    ax.xaxis.set_major_locator(MaxNLocator(6, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(Trimmed(useOffset=False))
    ax.set_xlabel("measured slope of log10 ‖dL/dH_t‖ per step back (decades/step)")
    ax.set_ylabel("top Lyapunov exponent λ₁ / ln 10 (decades/step)")
    ax.set_title("Measured gradient slope against the top Lyapunov exponent\n"
                 "of the input-driven hidden dynamics")
    note_points(fig, ax, data, ok, ("slope", "lyapunov"),
                "with a non-finite slope or exponent, or whose loss is not at the last step")
    return fig


@figure_style
def curse_of_memory(summaries: pd.DataFrame, model: str | None = None) -> Figure:
    """The LRU's ‖dL/dλ‖ and ‖dL/dν_log‖ against its memory 1/(1 - r), log-log, with and
    without normalization, and the power laws fitted from 1/(1 - r) = 10 on.

    Args:
      summaries: a `load_summaries` frame of `cell=lru` jobs with r_min = r_max = r.
      model: what the title calls the cell ("LRU"; default: its `model` from the data).

    Returns:
      The figure.
    """
    curse = frames.curse_of_memory(summaries)
    slopes = frames.power_law_slopes(curse).set_index(["quantity", "normalize"])
    palette = {True: OKABE_ITO[0], False: OKABE_ITO[1]}
    fig = Figure(figsize=(14, 6), layout="constrained")
    axes = fig.subplots(1, len(frames.CURSE))
    notes = []
    for ax, (q, (name, _)) in zip(axes, frames.CURSE.items(), strict=True):
        for normalize, g in curse.groupby("normalize"):
            s = slopes.loc[(q, normalize)]
            c = palette[bool(normalize)]
            ok = g[q] > 0
            ax.plot(g["memory"][ok], g[q][ok], color=c, marker="o", ms=7, lw=1.5,
                    label=f"{'normalized' if normalize else 'not normalized'}: slope "
                          f"{s['measured']:.2f} (theory {s['predicted']:g})")
            fit = g[(g["memory"] >= frames.CURSE_FROM) & ok]
            if len(fit) >= 2:
                x = np.log10(fit["memory"].to_numpy())
                b = np.polyfit(x, np.log10(fit[q].to_numpy()), 1)
                ax.plot(10 ** x, 10 ** np.polyval(b, x), color=c, ls="--", lw=1)
        ax.set_xscale("log")
        log_y(ax)
        ax.set_xlabel("memory 1/(1 − r) (steps)")
        ax.set_ylabel(f"{name} at initialization (median over seeds)")
        ax.set_title(name)
        ax.legend(frameon=False, fontsize=10, loc="upper left")
        shown = curse[curse[q] > 0]
        notes.append(coinciding(ax, shown["memory"], shown[q], [
            f"{'normalized' if n else 'not normalized'} r={r:g}"
            for n, r in zip(shown["normalize"], shown["r"], strict=True)], of=name))
    model = model or " and ".join(dict.fromkeys(frames.model(frames.config_frame(summaries))))
    fig.suptitle(f"The curse of memory: the {model}'s gradients with respect to its eigenvalues as "
                 f"|λ| = r → 1\n(dashed: the power law fitted from 1/(1 − r) = "
                 f"{frames.CURSE_FROM:g} on)")
    note(fig, "\n".join(n for n in notes if n))
    return fig
