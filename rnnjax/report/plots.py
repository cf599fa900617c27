"""Figures of a run or sweep: pure functions from the frames of `rnnjax.app.results` (`load_sweep`,
`load_summaries`, `load_metrics`) to matplotlib Figures, drawn with seaborn from the tables of
`rnnjax.report.frames`.

The figures are `matplotlib.figure.Figure` objects made without pyplot, so nothing global is
kept: save them with `fig.savefig(...)`, or let a notebook show them.

Conventions: steps back are counted from each job's own T (`T`: seq_len, or seq_len + 20 for
task=copy); lines are medians over seeds of log10 norms (see
`rnnjax.report.frames.profile_stats`), a median that is not finite is not plotted and the
figure says how many it left out; a theory
line is drawn only where it applies (`rnnjax.report.frames.predictions`); a y-range narrower than
`MIN_DECADES` is widened to it, so a flat profile reads flat instead of as zoomed noise;
points drawn at the same place (`COINCIDE`) are named in a note, never jittered; categorical
colours are Okabe and Ito's colour-blind-safe palette.
"""

import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter
from scipy.sparse.csgraph import connected_components

from rnnjax.core.theory import mean_field
from rnnjax.report import frames
from rnnjax.report.frames import (
    INIT_PARAMS,
    LYAPUNOV,
    MF,
    NAMES,
    SLOPE,
    config_label,
    dropped_note,
    job_order,
    job_T,
    jobs_table,
    labels,
    predictions,
    profile_stats,
)

LOG10_NORM = "log10 ‖dL/dH_t‖ (decades)"
STEPS_BACK = "steps back from the loss, T − t"
TIMESTEP = "timestep t"
# What the heatmap's colours map: its colour bar's label, in short lines (a label wider than
# the bar narrows the heatmap to make room for it)
HEATMAP_LABEL = ("log10 ‖dL/dH_t‖ − log10 ‖dL/dH_T‖\n(decades; medians over seeds)\n"
                 "0 (white): as large as at t = T")
MIN_DECADES = 2.0  # the narrowest y-range of a log10 axis, in decades
# What a panel of the cell figures names, so that a cell's label (and colour) is the same in all
TASK_KEYS = ("task", "T", "seq_len", "vocab_size", "loss_at", "steps")
# Okabe & Ito (2008): told apart with every common colour-vision deficiency; yellow last (faint
# on white), blue and orange first.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#000000", "#56B4E9", "#D55E00",
             "#F0E442")
FONT_SCALE = 1.25  # seaborn's "notebook" context, scaled: text readable at a glance
LEGEND_INCHES = 5.0  # a legend beside the panels ("interquartile range over seeds") and a y label
# Points closer than this fraction of the axes' width and height draw as one (a pixel of an
# axes 500 pixels wide): the figures that draw points say which coincide.
COINCIDE = 0.002


def _styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draws inside seaborn's notebook context with larger text and a light grid."""
    @functools.wraps(draw)
    def styled(*args, **kwargs) -> Figure:
        with sns.plotting_context("notebook", font_scale=FONT_SCALE), \
                sns.axes_style("ticks", {"axes.grid": True, "grid.color": "0.92"}):
            return draw(*args, **kwargs)

    return styled


def categorical(names: Iterable[str]) -> dict[str, str]:
    """An Okabe-Ito colour per distinct name, in order of appearance."""
    names = list(dict.fromkeys(names))
    return {n: OKABE_ITO[i % len(OKABE_ITO)] for i, n in enumerate(names)}


def _note(fig: Figure, text: str) -> None:
    """A footnote in the bottom left corner, with room made for it."""
    if text:
        lines = text.count("\n") + 1
        room = (0.3 + 0.2 * lines) / fig.get_figheight()
        fig.get_layout_engine().set(rect=(0, room, 1, 1 - room))
        fig.text(0.005, 0.005, text, ha="left", va="bottom", fontsize=9, color="dimgray",
                 wrap=True)


def _log_y(ax: Axes) -> None:
    """A log y axis with plain tick labels at 1, 2 and 5 times powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


class _Trimmed(ScalarFormatter):
    """matplotlib's plain tick labels without trailing zeros ("−0.01", "0.005", "0")."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        """The label of the tick at `x`.

        Args:
          x: the tick's value.
          pos: its position among the ticks.

        Returns:
          ScalarFormatter's label, its decimals' trailing zeros removed.
        """
        text = super().__call__(x, pos)
        return re.sub(r"\.?0+$", "", text) if "." in text else text


def min_span(ax: Axes, decades: float = MIN_DECADES) -> None:
    """Widens the y-range of a log10 axis to at least `decades`, about its middle."""
    lo, hi = ax.get_ylim()
    if hi - lo < decades:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - decades / 2, mid + decades / 2)


def _x_to_data(ax: Axes, right: float, left: float = 0.0) -> None:
    """An x-range from `left` to the data's last finite point, with a margin."""
    if np.isfinite(right) and right > left:
        ax.set_xlim(left, right + 0.03 * (right - left))


def _model(jobs: pd.DataFrame) -> pd.Series:
    """What a job's network is, in one word: the activation of a vanilla RNN, else the cell."""
    cell = jobs["cell"] if "cell" in jobs else pd.Series("vanilla", index=jobs.index)
    act = jobs["activation"] if "activation" in jobs else cell
    return act.where(cell == "vanilla", cell)


def _text(jobs: pd.DataFrame, key: str) -> pd.Series:
    """The label text of config key `key` per job: an init with its parameter ("gaussian
    g=2", "xavier"), else the key's own text ("" where the job has none)."""
    if key == "init" or key in INIT_PARAMS:
        return labels(jobs[[c for c in ("init", *INIT_PARAMS) if c in jobs]])
    if key not in jobs:
        return pd.Series("", index=jobs.index)
    return frames.format_values(jobs[key], key)


def hue_title(hue: str) -> str:
    """What the entries of a legend coloured by config key `hue` are (its title): an init or
    one of its parameters colours by the init with its parameter ("gaussian g=2", "normal
    std=0.01"), so its entries are initializations.

    Args:
      hue: the config key (`rnnjax.report.build.decay_hue`'s choice, or `decay_curves`' hue).

    Returns:
      The title: `rnnjax.report.frames.NAMES`' name of the key whose text the entries show.
    """
    shown = "init" if hue in INIT_PARAMS else hue  # as `_text` labels them
    return NAMES.get(shown, shown)


def _hue_palette(values: pd.Series, text: pd.Series) -> dict[str, tuple | str]:
    """Colours for the distinct `text` values, ordered by `values`: sequential when numeric."""
    numeric = pd.api.types.is_numeric_dtype(values) and values.notna().all()
    if numeric:
        ordered = list(dict.fromkeys(text.iloc[np.argsort(values.to_numpy(), kind="stable")]))
        return dict(zip(ordered, sns.color_palette("flare", len(ordered)), strict=True))
    return categorical(text)


def _anchored(g: pd.DataFrame, slope: float, y: str = "median") -> pd.DataFrame | None:
    """The line with `slope` (log10 per step back) through the measured `y` at steps back
    T // 4 (the start of the fit; the nearest finite point where that one is not)."""
    finite = g[np.isfinite(g[y])]
    if finite.empty or not np.isfinite(slope):
        return None
    k0 = int(g["T"].iloc[0]) // 4
    anchor = finite.iloc[int(np.argmin(np.abs(finite["steps_back"].to_numpy() - k0)))]
    k = np.sort(g["steps_back"].to_numpy())
    return pd.DataFrame({"steps_back": k, "y": anchor[y] + slope * (k - anchor["steps_back"])})


def _no_prediction_note(summaries: pd.DataFrame | None, drawn: int) -> str:
    if summaries is None or drawn:
        return ""
    loss_at = frames.config_frame(summaries).get("loss_at")
    if loss_at is not None and (loss_at == "all").all():
        return ("No prediction drawn: with the loss averaged over all steps every step's own "
                "loss term keeps the profile flat; probe.loss_at=last measures how one term's "
                "gradient decays.")
    return ""


def _grid(n: int, nrows: int) -> tuple[int, int]:
    """(rows, columns) of a panel grid: one row of up to 5 panels, else about square."""
    if nrows > 1:
        return nrows, n // nrows
    if n <= 5:
        return 1, n
    ncols = math.ceil(n / 2)
    return 2, ncols


@_styled
def decay_curves(df: pd.DataFrame, summaries: pd.DataFrame | None = None, hue: str = "T",
                 row: str | None = None) -> Figure:
    """log10 grad_norm at initialization against steps back from the end, T − t.

    One panel per model (columns: the activation of a vanilla RNN, else the cell) and per row
    (`row`'s values, or what varies besides the model and `hue`), one line per job coloured by
    `hue`: the median over seeds, with the interquartile range over seeds as a band. The x-range
    ends where the last finite median does; rows share their y-range.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.
      summaries: the `load_summaries` frame of the same sweep: where a prediction applies
        (`rnnjax.report.frames.predictions`) it is drawn dashed with its slope per step back,
        anchored at the measured median where the fit starts (T − t = T // 4).
      hue: the config column that colours the lines ("T", "init_gain", "init", "cell").
      row: the config column whose values make the rows ("init": the init with its
        parameter); None: every other config key that varies.

    Returns:
      The figure.
    """
    d = df[df["train_step"] == 0]
    jobs = jobs_table(d)
    if hue not in jobs:
        hue = "seq_len" if "seq_len" in jobs else "init"
    jobs["model"] = _model(jobs)
    jobs["hue"] = _text(jobs, hue)
    own = jobs["hue"] != ""  # a job without the key: its configuration's label, never "n/a"
    jobs["hue"] = jobs["hue"].where(own, jobs["label"])
    title = hue_title(hue) + ("" if own.all() else "\n(else the configuration)")
    jobs["row"] = (_text(jobs, row) if row is not None
                   else labels(jobs.drop(columns=["label", "model", "hue", "job"]),
                               exclude=("activation", "cell", hue)))
    if row is None and jobs.groupby("model", sort=False)["row"].nunique().max() == 1:
        # Rows that only tell models apart (the init of the cells that take one): one row,
        # the row's text in the model's title.
        jobs["model"] = jobs["model"].where(jobs["row"] == "",
                                            jobs["model"] + " · " + jobs["row"])
        jobs["row"] = ""
    palette = _hue_palette(jobs[hue], jobs["hue"])
    stats = profile_stats(d).merge(jobs[["job", "model", "row", "hue"]], on="job")
    stats["T"] = stats["job"].map(job_T(d))
    stats["steps_back"] = stats["T"] - stats["t"]
    models = list(dict.fromkeys(jobs["model"]))
    rows = list(dict.fromkeys(jobs["row"]))  # in the order of the jobs (inits as INITS)
    keys = [(r, m) for r in rows for m in models]
    nrows, ncols = _grid(len(keys), len(rows))

    big = nrows * ncols > 8  # a large grid gets smaller panels
    # The width of the columns used and of the legend and y label beside them (2.8 inches for
    # both left one panel 2.5 inches of 7.1: the legend alone is about 3.6)
    fig = Figure(figsize=(LEGEND_INCHES + (3.6 if big else 4.3) * ncols,
                          1.4 + (2.7 if big else 3.3) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey="row" if nrows > 1 and len(rows) > 1
                        else True, squeeze=False).ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    panels: dict[tuple[str, str], Axes] = {}
    for ax, (r, m) in zip(axes, keys, strict=False):
        panel = stats[(stats["row"] == r) & (stats["model"] == m)]
        ax.set_title(f"{m} · {r}" if r and len(r) < 24 else f"{m}\n{r}" if r else m)
        if panel.empty:  # a combination the sweep does not have
            ax.set_visible(False)
            continue
        panels[r, m] = ax
        for _, g in panel.sort_values("steps_back").groupby("job", sort=False):
            color = palette[g["hue"].iloc[0]]
            ok = np.isfinite(g["median"])
            ax.plot(g["steps_back"][ok], g["median"][ok], color=color, lw=2)
            band = g[["q25", "q75"]].where(np.isfinite(g[["q25", "q75"]]))
            ax.fill_between(g["steps_back"], band["q25"], band["q75"], color=color, alpha=0.2,
                            lw=0)
    finite = stats[np.isfinite(stats["median"])]
    _x_to_data(axes[0], float(finite["steps_back"].max()) if len(finite) else math.nan)
    # whole steps back: no "12.5" labels, which ran into their neighbours on narrow panels
    axes[0].xaxis.set_major_locator(MaxNLocator("auto", integer=True, steps=[1, 2, 5, 10]))
    for ax in panels.values():
        min_span(ax)
    grid = axes.reshape(nrows, ncols)
    for col in grid.T:  # the x-axis of the lowest visible panel of each column
        shown = [ax for ax in col if ax.get_visible()]
        if shown:
            shown[-1].tick_params(labelbottom=True)
            shown[-1].set_xlabel(STEPS_BACK)
    for row_axes in grid:  # the y-axis of the first visible panel of each row
        shown = [ax for ax in row_axes if ax.get_visible()]
        if shown:
            shown[0].tick_params(labelleft=True)
            if nrows == 1:
                shown[0].set_ylabel(LOG10_NORM)
    if nrows > 1:  # one label for every row: a label each ran into the rows beside it
        fig.supylabel(LOG10_NORM)

    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in palette.items()]
    handles.append(Patch(color="gray", alpha=0.3, label="interquartile range over seeds"))
    drawn = 0
    if summaries is not None:
        for ax in panels.values():  # predictions may not widen the axes
            ax.set_ylim(ax.get_ylim())
        pred = predictions(summaries)
        for job, g in stats.groupby("job"):
            if job not in pred.index or not pred.loc[job, "applies"]:
                continue
            line = _anchored(g, float(pred.loc[job, "slope"]))
            if line is not None:
                panels[g["row"].iloc[0], g["model"].iloc[0]].plot(
                    line["steps_back"], line["y"], ls="--", lw=1.4,
                    color=palette[g["hue"].iloc[0]])
                drawn += 1
        if drawn:
            names = sorted(set(pred.loc[pred["applies"], "name"]))
            handles.append(Line2D([], [], color="gray", ls="--",
                                  label="prediction:\n" + ",\n".join(names)
                                  + "\n(anchored at T − t = T/4)"))
    fig.legend(handles=handles, title=title, loc="outside right center")
    # wrapped to the figure's width: a title wider than the figure widened the saved PNG
    # (bbox_inches="tight") with blank space
    fig.suptitle("How ‖dL/dH_t‖ changes going back in time, at initialization "
                 "(lines: median over seeds)", wrap=True)
    notes = [_no_prediction_note(summaries, drawn), dropped_note(stats)]
    _note(fig, "\n".join(n for n in notes if n))
    return fig


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


@_styled
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
      The figure: one row per job, cells whose median underflowed to 0 in black, those that
      overflowed (or are NaN) in gold, steps a shorter sequence does not have hatched.
    """
    d = df[df["train_step"] == 0]
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
    _note(fig, "\n".join(n for n in notes if n))
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
        "model": _model(cfg),
        "init": cfg.get("init", nan),
        "slope": pd.to_numeric(summaries.get(SLOPE, nan), errors="coerce"),
        "gain": pd.to_numeric(summaries.get(MF + "gain", nan), errors="coerce"),
        "input_var": pd.to_numeric(summaries.get(MF + "input_var", nan), errors="coerce"),
        "bias_var": pd.to_numeric(summaries.get(MF + "bias_var", nan), errors="coerce"),
        "lyapunov": pd.to_numeric(summaries.get(LYAPUNOV, nan), errors="coerce"),
        "last": (cfg.get("loss_at", nan) == "last").to_numpy(),
        "applies": pred["applies"].to_numpy(),
    })


def _left_out(n: int, why: str) -> str:
    return f"Not plotted: {n} job(s) {why}." if n else ""


def _and(names: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


COINCIDE_LINES = 2  # the most groups of coinciding points a note names one by one


def _coinciding(ax: Axes, x: Iterable[float], y: Iterable[float], names: Iterable[str],
                of: str = "") -> str:
    """A note naming the points of `ax` that are drawn at the same place ("" when none).

    Points coincide when they lie within `COINCIDE` of the axes' width and height of each other
    (on log axes, in log space), directly or through a chain of such points; the limits are
    those of the axes as drawn so far, so call this after everything is plotted.

    Args:
      ax: the axes the points are drawn on.
      x, y: the points' data coordinates.
      names: what each point is (a job's label), in the same order.
      of: the panel, where a figure notes several ("‖dL/dλ‖").

    Returns:
      One line per group, e.g. "2 points coincide: tanh g=1 and linear g=1.", for up to
      COINCIDE_LINES groups; beyond, one line that counts them and names the first (a note
      of a line per group squeezed a sweep's figure to nothing).
    """
    xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    names = list(names)
    if len(xy) < 2:
        return ""
    ax.get_xlim(), ax.get_ylim()  # autoscales now: the limits the points are drawn in
    pos = ax.transLimits.transform(ax.transScale.transform(xy))  # axes fraction
    near = (np.abs(pos[:, None, :] - pos[None, :, :]) <= COINCIDE).all(axis=-1)
    _, group = connected_components(near, directed=False)  # the chains of near points
    groups = [members for g in dict.fromkeys(group)
              if len(members := [names[i] for i in np.flatnonzero(group == g)]) > 1]
    prefix = f"{of}: " if of else ""
    if len(groups) <= COINCIDE_LINES:
        return "\n".join(f"{prefix}{len(m)} points coincide: {_and(m)}." for m in groups)
    return (f"{prefix}{sum(map(len, groups))} points lie on top of one another in "
            f"{len(groups)} places (e.g. {_and(groups[0])}); the slope table lists every job.")


@_styled
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
    acts = frames.order(data["model"], list(frames.ACTIVATIONS))
    palette = categorical(acts)
    gains = data["gain"]  # theory also where the slope is not
    grid = np.linspace(0.8 * gains.min(), 1.2 * gains.max(), 121) if len(gains) else []

    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    curves, critical = [], []
    for act in acts:
        jobs = data[data["model"] == act]
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
    sns.scatterplot(data=data[ok].rename(columns={"model": "activation"}), x="gain",
                    y="factor", hue="activation", hue_order=acts, palette=palette,
                    style="init" if data["init"].nunique() > 1 else None, s=70, zorder=3,
                    ax=ax)
    ax.axhline(1.0, color="black", lw=0.8, ls="-.")
    _log_y(ax)
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
    shown = data[ok]
    notes = [_left_out(int((~ok).sum()), "with no finite measured slope, or whose loss is not "
                       "at the last step"),
             _coinciding(ax, shown["gain"], shown["factor"], shown["label"])]
    _note(fig, "\n".join(n for n in notes if n))
    return fig


@_styled
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
    models = frames.order(data["model"], [*frames.ACTIVATIONS, *frames.CELLS])
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
    ax.xaxis.set_major_formatter(_Trimmed(useOffset=False))
    ax.set_xlabel("measured slope of log10 ‖dL/dH_t‖ per step back (decades/step)")
    ax.set_ylabel("top Lyapunov exponent λ₁ / ln 10 (decades/step)")
    ax.set_title("Measured gradient slope against the top Lyapunov exponent\n"
                 "of the input-driven hidden dynamics")
    shown = data[ok]
    notes = [_left_out(int((~ok).sum()), "with a non-finite slope or exponent, or whose loss "
                       "is not at the last step"),
             _coinciding(ax, shown["slope"], shown["lyapunov"], shown["label"])]
    _note(fig, "\n".join(n for n in notes if n))
    return fig


def _baselines(metrics: pd.DataFrame) -> list[tuple[float, str]]:
    """(loss, label) of each memoryless baseline of the tasks in `metrics` (one per task, T
    and loss_at)."""
    cfg = frames.config_frame(metrics)
    if "task" not in cfg:
        return []
    T = cfg["T"] if "T" in cfg else pd.Series(np.nan, index=cfg.index)
    loss_at = cfg["loss_at"] if "loss_at" in cfg else pd.Series("all", index=cfg.index)
    out = []
    for task, t, at in dict.fromkeys(zip(cfg["task"], T, loss_at, strict=True)):
        if task == "copy" and not np.isfinite(t):
            continue
        b = frames.memoryless_baseline(task, int(t) if np.isfinite(t) else 0, at)
        if b is None:
            continue
        if task == "adding":
            out.append((b, "memoryless baseline: MSE 1/6\n(always predicting 1)"))
        else:
            out.append((b, f"memoryless baseline: 10·log 8 / {int(t)}\n= {b:.4g} (copy, "
                           f"T = {int(t)} steps)" if at == "all" else
                        f"memoryless baseline: log 8 = {b:.4g}"))
    return out


@_styled
def training_curves(metrics: pd.DataFrame, df: pd.DataFrame, job: str | None = None,
                    summaries: pd.DataFrame | None = None) -> Figure:
    """Training curves (left) and the gradient profile over training of one job (right).

    Left: validation (solid) and training (dashed) perplexity, or loss where the task has no
    perplexity (log scale where it spans more than a decade), against the training step,
    median over seeds, one colour per job; the memoryless baseline of the adding (MSE 1/6) and
    copy (10·log 8 / T) tasks dotted. Right: log10 grad_norm (median over seeds) against t,
    one line per logged training step.

    Args:
      metrics: a `load_metrics` frame.
      df: the `load_sweep` frame of the same sweep.
      job: the job of the right panel (default: the first trained job).
      summaries: the `load_summaries` frame, for labels that name the training options.

    Returns:
      The figure.
    """
    source = metrics.drop_duplicates("job") if summaries is None else (
        summaries[summaries["job"].isin(metrics["job"])])
    label_of = dict(zip(source["job"], config_label(source), strict=True))
    job = job_order(metrics["job"])[0] if job is None else job
    if job not in set(df["job"]):
        raise ValueError(f"training_curves: job {job!r} is not in the sweep")

    kind = "ppl" if metrics[["train_ppl", "val_ppl"]].notna().any().any() else "loss"
    splits = {f"val_{kind}": "validation", f"train_{kind}": "training (interval mean)"}
    long = metrics.melt(id_vars=["job", "seed", "train_step"], value_vars=list(splits),
                        var_name="split", value_name="value")
    long["split"] = long["split"].map(splits)
    long["configuration"] = long["job"].map(label_of)
    ok = np.isfinite(long["value"]) & (long["value"] > 0)

    fig = Figure(figsize=(15, 6.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    order = [label_of[j] for j in job_order(metrics["job"])]
    sns.lineplot(data=long[ok], x="train_step", y="value", hue="configuration",
                 hue_order=order, palette=categorical(order), style="split",
                 style_order=list(splits.values()), estimator="median", errorbar=None, ax=left)
    # On a perplexity axis the baseline is drawn, and labelled, as exp(loss).
    as_ppl = kind == "ppl"
    baselines = [left.axhline(math.exp(value) if as_ppl else value, color="black", ls=":",
                              lw=1.5, label=label + (f"\nas perplexity: {math.exp(value):.4g}"
                                                     if as_ppl else ""))
                 for value, label in _baselines(metrics)]
    values = long.loc[ok, "value"]
    log_scale = values.size > 0 and values.max() > 10 * values.min()  # more than a decade
    if log_scale:
        _log_y(left)
    left.set_xlabel("training step (optimizer updates)")
    loss = "loss (squared error)" if set(metrics["task"]) == {"adding"} else "loss"
    left.set_ylabel(("perplexity" if kind == "ppl" else loss)
                    + (" (log scale)" if log_scale else ""))
    left.set_title(f"Training: {'perplexity' if kind == 'ppl' else 'loss'}, median over seeds")
    legend = left.get_legend()
    left.legend(handles=[*legend.legend_handles, *baselines],
                labels=[t.get_text() for t in legend.get_texts()]
                + [b.get_label() for b in baselines],
                loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False, fontsize=9)

    d = df[df["job"] == job]
    stats = profile_stats(d, by=("train_step",))
    steps = sorted(stats["train_step"].unique())
    sns.lineplot(data=stats[np.isfinite(stats["median"])], x="t", y="median", hue="train_step",
                 palette="viridis", legend="full" if len(steps) <= 12 else "brief", ax=right)
    sns.move_legend(right, "upper left", bbox_to_anchor=(1.01, 1), title="training step",
                    frameon=False, fontsize=9)
    min_span(right)
    right.set_xlabel(TIMESTEP)
    right.set_ylabel(LOG10_NORM)  # with ", median over seeds" it ran into the title
    right.set_title(f"Gradient profile during training, median over seeds:\n"
                    f"{label_of.get(job, job)}", fontsize="medium")
    fig.suptitle("Training, and how the per-timestep gradient changes while training")
    notes = [f"Not plotted: {int((~ok).sum())} seed-step losses that are NaN/inf (diverged)."
             if (~ok).any() else "", dropped_note(stats, "(training step, t)")]
    _note(fig, " ".join(n for n in notes if n))
    return fig


def _diverged(metrics: pd.DataFrame | None) -> dict[str, str]:
    """job -> "k of S seeds diverged (from step s)" for the jobs with a diverged seed."""
    if metrics is None:
        return {}
    out = {}
    for job, g in metrics.groupby("job"):
        dead = g[~g["alive"].astype(bool)]
        if len(dead):
            first = int(dead["train_step"].min())
            out[job] = (f"{dead['seed'].nunique()} of {g['seed'].nunique()} seed(s) diverged "
                        f"by step {first}")
    return out


SEED_LINES = 8  # up to this many seeds a figure draws each one; beyond, a band


@_styled
def before_after(df: pd.DataFrame, summaries: pd.DataFrame | None = None,
                 metrics: pd.DataFrame | None = None, names: dict[str, str] | None = None
                 ) -> Figure:
    """‖dL/dH_t‖ over t at initialization (left) and after the last logged training step
    (right), one colour per job, as in Arjovsky et al.'s figure of ‖dC/dh_t‖.

    Each job's median over seeds is a thick line; its seeds are thin lines (up to
    `SEED_LINES` seeds) or a band from the 10th to the 90th percentile over seeds (more). A
    job that did not train appears on the left only.

    Args:
      df: a `load_sweep` frame.
      summaries: the `load_summaries` frame, for labels that name the training options.
      metrics: the `load_metrics` frame: jobs with a diverged seed say so in the legend.
      names: job -> a legend label of its own (default: its config label).

    Returns:
      The figure.
    """
    jobs = jobs_table(df if summaries is None else summaries)
    label_of = dict(zip(jobs["job"], jobs["label"], strict=True)) | (names or {})
    palette = categorical(label_of[j] for j in jobs["job"])
    last = int(df["train_step"].max())
    diverged = _diverged(metrics)

    fig = Figure(figsize=(16, 6.5), layout="constrained")
    axes = fig.subplots(1, 2 if last else 1, sharey=True, squeeze=False).ravel()
    notes, handles = [], {}
    for ax, step in zip(axes, [0, last] if last else [0], strict=True):
        for job in jobs["job"]:
            d = df[(df["job"] == job) & (df["train_step"] == step)]
            if d.empty:
                continue
            color = palette[label_of[job]]
            stats = profile_stats(d, quantiles=(0.1, 0.5, 0.9))
            n_seeds = d["seed"].nunique()
            if n_seeds <= SEED_LINES:
                with np.errstate(divide="ignore"):
                    for _, s in d.sort_values("t").groupby("seed"):
                        lg = np.log10(s["grad_norm"].to_numpy(np.float64))
                        ax.plot(s["t"], np.where(np.isfinite(lg), lg, np.nan), color=color,
                                lw=0.7, alpha=0.45)
            else:
                band = stats[["q10", "q90"]].where(np.isfinite(stats[["q10", "q90"]]))
                ax.fill_between(stats["t"], band["q10"], band["q90"], color=color, alpha=0.18,
                                lw=0)
            ok = np.isfinite(stats["median"])
            ax.plot(stats["t"][ok], stats["median"][ok], color=color, lw=2.4)
            text = label_of[job] + (f" ({n_seeds} seeds)" if n_seeds > 1 else " (1 seed)")
            if job in diverged:
                text += f"\n{diverged[job]}"
            handles.setdefault(job, Line2D([], [], color=color, lw=2.4, label=text))
            notes.append(dropped_note(stats, "timestep", of=f"{label_of[job]} after {step} "
                                                            "training steps"))
        ax.set_title("at initialization" if step == 0 else f"after {step} training steps")
        ax.set_xlabel(TIMESTEP)
        _x_to_data(ax, float(df["t"].max()), 1.0)
    axes[0].set_ylabel(LOG10_NORM)
    for ax in axes:
        min_span(ax)
    extra = [Line2D([], [], color="gray", lw=2.4, label="median over seeds"),
             Line2D([], [], color="gray", lw=0.7, alpha=0.6, label="one seed"),
             Patch(color="gray", alpha=0.3, label="10th–90th percentile over seeds "
                                                  f"(more than {SEED_LINES} seeds)")]
    fig.legend(handles=[*handles.values(), *extra], loc="outside right center",
               frameon=False, fontsize=10)
    fig.suptitle("‖dL/dH_t‖ over the sequence, at initialization and after training")
    _note(fig, " ".join(n for n in notes if n))
    return fig


@_styled
def cells_at_init(df: pd.DataFrame, summaries: pd.DataFrame | None = None) -> Figure:
    """Every cell's gradient profile at initialization, one panel per task (rows) and T
    (columns): log10 ‖dL/dH_t‖ relative to its value at t = T (decades below the gradient at
    the loss step), median over seeds with the interquartile band, against steps back; the
    prediction dashed where one applies.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.
      summaries: the `load_summaries` frame of the same jobs (for the predictions).

    Returns:
      The figure.
    """
    d = df[df["train_step"] == 0]
    jobs = jobs_table(d)
    jobs["model"] = labels(jobs.drop(columns=["label", "job"]), exclude=TASK_KEYS)
    palette = categorical(jobs["model"])
    T_of = job_T(d)
    stats = profile_stats(d).merge(jobs[["job", "model", "task"]], on="job")
    stats["T"] = stats["job"].map(T_of)
    stats["steps_back"] = stats["T"] - stats["t"]
    end = stats[stats["t"] == stats["T"]].set_index("job")["median"]
    for q in ("q25", "median", "q75"):
        stats[q] = stats[q] - stats["job"].map(end)
    tasks = frames.order(jobs["task"], ["adding", "copy", "random", "timemachine"])
    Ts = sorted(T_of.unique())
    fig = Figure(figsize=(3 + 5.2 * len(Ts), 1.6 + 3.8 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), len(Ts), sharey=True, sharex="col", squeeze=False)
    pred = predictions(summaries) if summaries is not None else None
    drawn = 0
    for i, task in enumerate(tasks):
        for j, T in enumerate(Ts):
            ax = axes[i, j]
            panel = stats[(stats["task"] == task) & (stats["T"] == T)]
            ax.set_title(f"{task}, T = {T}")
            for job, g in panel.sort_values("steps_back").groupby("job", sort=False):
                color = palette[jobs.set_index("job").loc[job, "model"]]
                ok = np.isfinite(g["median"])
                ax.plot(g["steps_back"][ok], g["median"][ok], color=color, lw=2)
                band = g[["q25", "q75"]].where(np.isfinite(g[["q25", "q75"]]))
                ax.fill_between(g["steps_back"], band["q25"], band["q75"], color=color,
                                alpha=0.18, lw=0)
            if i == len(tasks) - 1:
                ax.set_xlabel(STEPS_BACK)
    # one label for every row (a label per row, on two lines, ran into the next row's)
    fig.supylabel("log10 ‖dL/dH_t‖ − log10 ‖dL/dH_T‖ (decades)")
    for j, T in enumerate(Ts):
        fin = stats[(stats["T"] == T) & np.isfinite(stats["median"])]
        _x_to_data(axes[0, j], float(fin["steps_back"].max()) if len(fin) else math.nan)
    min_span(axes[0, 0])
    if pred is not None:
        for ax in axes.ravel():
            ax.set_ylim(ax.get_ylim())
        for job, g in stats.groupby("job"):
            if job in pred.index and pred.loc[job, "applies"]:
                line = _anchored(g.sort_values("steps_back"), float(pred.loc[job, "slope"]))
                if line is not None:
                    i = tasks.index(g["task"].iloc[0])
                    j = Ts.index(g["T"].iloc[0])
                    axes[i, j].plot(line["steps_back"], line["y"], ls="--", lw=1.3,
                                    color=palette[jobs.set_index("job").loc[job, "model"]])
                    drawn += 1
    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in palette.items()]
    handles.append(Patch(color="gray", alpha=0.3, label="interquartile range over seeds"))
    if drawn:
        handles.append(Line2D([], [], color="gray", ls="--", label="prediction where one "
                                                                  "applies\n(anchored at "
                                                                  "T − t = T/4)"))
    fig.legend(handles=handles, title="cell", loc="outside right center")
    fig.suptitle("Every cell at initialization: how ‖dL/dH_t‖ falls going back from the loss "
                 "at t = T\n(median over seeds)")
    _note(fig, dropped_note(stats))
    return fig


@_styled
def cells_training(metrics: pd.DataFrame, summaries: pd.DataFrame | None = None) -> Figure:
    """Training loss against steps per cell, one panel per task and T, with the memoryless
    baseline dotted.

    Args:
      metrics: a `load_metrics` frame (train_loss: the mean over each logging interval).
      summaries: the `load_summaries` frame, for labels that name the cells' options.

    Returns:
      The figure.
    """
    source = metrics.drop_duplicates("job") if summaries is None else (
        summaries[summaries["job"].isin(metrics["job"])])
    jobs = jobs_table(source)
    jobs["model"] = labels(jobs.drop(columns=["label", "job"]), exclude=TASK_KEYS)
    model_of = dict(zip(jobs["job"], jobs["model"], strict=True))
    palette = categorical(jobs["model"])
    cfg = frames.config_frame(metrics)
    m = metrics.assign(model=metrics["job"].map(model_of), task=cfg["task"], T=cfg["T"])
    panels = list(dict.fromkeys(zip(m["task"], m["T"], strict=True)))
    fig = Figure(figsize=(3 + 6 * len(panels), 6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False).ravel())
    diverged = _diverged(metrics)
    for ax, (task, T) in zip(axes, panels, strict=True):
        g = m[(m["task"] == task) & (m["T"] == T) & np.isfinite(m["train_loss"])]
        g = g.groupby(["model", "train_step"], sort=False)["train_loss"].median().reset_index()
        for model, c in palette.items():
            line = g[g["model"] == model]
            if len(line):
                ax.plot(line["train_step"], line["train_loss"], color=c, lw=2, marker="o",
                        ms=3)
        base = _baselines(m[(m["task"] == task) & (m["T"] == T)])
        for value, _ in base:
            ax.axhline(value, color="black", ls=":", lw=1.6)
        _log_y(ax)
        ax.set_title(f"{task}, T = {T} steps"
                     + "".join(f"\n(baseline {value:.4g})" for value, _ in base))
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (" + ("squared error" if task == "adding" else
                                           "cross-entropy") + ", interval mean)")
    notes = {model_of[j]: text for j, text in diverged.items()}
    handles = [Line2D([], [], color=c, lw=2, label=k + (f"\n{notes[k]}" if k in notes else ""))
               for k, c in palette.items()]
    handles.append(Line2D([], [], color="black", ls=":", lw=1.6,
                          label="memoryless baseline: copy 10·log 8 / T,\nadding MSE 1/6"))
    fig.legend(handles=handles, title="cell", loc="outside right center")
    fig.suptitle("Training every cell: loss against steps, median over seeds, with the "
                 "memoryless baseline")
    return fig


@_styled
def curse_of_memory(summaries: pd.DataFrame) -> Figure:
    """The LRU's ‖dL/dλ‖ and ‖dL/dν_log‖ against its memory 1/(1 - r), log-log, with and
    without normalization, and the power laws fitted from 1/(1 - r) = 10 on.

    Args:
      summaries: a `load_summaries` frame of `cell=lru` jobs with r_min = r_max = r.

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
        _log_y(ax)
        ax.set_xlabel("memory 1/(1 − r) (steps)")
        ax.set_ylabel(f"{name} at initialization (median over seeds)")
        ax.set_title(name)
        ax.legend(frameon=False, fontsize=10, loc="upper left")
        shown = curse[curse[q] > 0]
        notes.append(_coinciding(ax, shown["memory"], shown[q], [
            f"{'normalized' if n else 'not normalized'} r={r:g}"
            for n, r in zip(shown["normalize"], shown["r"], strict=True)], of=name))
    fig.suptitle("The curse of memory: the LRU's gradients with respect to its eigenvalues as "
                 f"|λ| = r → 1\n(dashed: the power law fitted from 1/(1 − r) = "
                 f"{frames.CURSE_FROM:g} on)")
    _note(fig, "\n".join(n for n in notes if n))
    return fig


__all__ = ["COINCIDE", "HEATMAP_LABEL", "MIN_DECADES", "OKABE_ITO", "before_after", "categorical",
           "cells_at_init", "cells_training", "curse_of_memory", "decay_curves", "heatmap",
           "hue_title", "min_span", "phase_diagram", "slope_vs_lyapunov", "training_curves"]
