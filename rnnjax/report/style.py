"""What every figure shares: text, colours, the styling context, notes of what a figure leaves
out or draws on top of one another, and the helpers the figure modules draw with."""

import functools
import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter
from scipy.sparse.csgraph import connected_components

from rnnjax.report import frames
from rnnjax.report.frames import (
    INIT_PARAMS,
    NAMES,
    labels,
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


def figure_style(draw: Callable[..., Figure]) -> Callable[..., Figure]:
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


def note(fig: Figure, text: str) -> None:
    """A footnote in the bottom left corner, with room made for it."""
    if text:
        lines = text.count("\n") + 1
        room = (0.3 + 0.2 * lines) / fig.get_figheight()
        fig.get_layout_engine().set(rect=(0, room, 1, 1 - room))
        fig.text(0.005, 0.005, text, ha="left", va="bottom", fontsize=9, color="dimgray",
                 wrap=True)


def log_y(ax: Axes) -> None:
    """A log y axis with plain tick labels at 1, 2 and 5 times powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


class Trimmed(ScalarFormatter):
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


def x_to_data(ax: Axes, right: float, left: float = 0.0) -> None:
    """An x-range from `left` to the data's last finite point, with a margin."""
    if np.isfinite(right) and right > left:
        ax.set_xlim(left, right + 0.03 * (right - left))


def key_text(jobs: pd.DataFrame, key: str) -> pd.Series:
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
    shown = "init" if hue in INIT_PARAMS else hue  # as `key_text` labels them
    return NAMES.get(shown, shown)


def hue_palette(values: pd.Series, text: pd.Series) -> dict[str, tuple | str]:
    """Colours for the distinct `text` values, ordered by `values`: sequential when numeric."""
    numeric = pd.api.types.is_numeric_dtype(values) and values.notna().all()
    if numeric:
        ordered = list(dict.fromkeys(text.iloc[np.argsort(values.to_numpy(), kind="stable")]))
        return dict(zip(ordered, sns.color_palette("flare", len(ordered)), strict=True))
    return categorical(text)


def anchored(g: pd.DataFrame, slope: float, y: str = "median") -> pd.DataFrame | None:
    """The line with `slope` (log10 per step back) through the measured `y` at steps back
    T // 4 (the start of the fit; the nearest finite point where that one is not)."""
    finite = g[np.isfinite(g[y])]
    if finite.empty or not np.isfinite(slope):
        return None
    k0 = int(g["T"].iloc[0]) // 4
    anchor = finite.iloc[int(np.argmin(np.abs(finite["steps_back"].to_numpy() - k0)))]
    k = np.sort(g["steps_back"].to_numpy())
    return pd.DataFrame({"steps_back": k, "y": anchor[y] + slope * (k - anchor["steps_back"])})


def no_prediction_note(summaries: pd.DataFrame | None, drawn: int) -> str:
    if summaries is None or drawn:
        return ""
    loss_at = frames.config_frame(summaries).get("loss_at")
    if loss_at is not None and (loss_at == "all").all():
        return ("No prediction drawn: with the loss averaged over all steps every step's own "
                "loss term keeps the profile flat; probe.loss_at=last measures how one term's "
                "gradient decays.")
    return ""


def left_out(n: int, why: str) -> str:
    return f"Not plotted: {n} job(s) {why}." if n else ""


def and_list(names: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def note_points(fig: Figure, ax: Axes, data: pd.DataFrame, ok: pd.Series,
                xy: tuple[str, str], why: str) -> None:
    """The footnote of a figure of one point per job: how many jobs it left out (those not
    `ok`, `why`) and which of the points drawn (`data[ok]`: columns `xy` and `label`)
    coincide."""
    shown = data[ok]
    notes = [left_out(int((~ok).sum()), why),
             coinciding(ax, shown[xy[0]], shown[xy[1]], shown["label"])]
    note(fig, "\n".join(n for n in notes if n))


COINCIDE_LINES = 2  # the most groups of coinciding points a note names one by one


def coinciding(ax: Axes, x: Iterable[float], y: Iterable[float], names: Iterable[str],
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
        return "\n".join(f"{prefix}{len(m)} points coincide: {and_list(m)}." for m in groups)
    return (f"{prefix}{sum(map(len, groups))} points lie on top of one another in "
            f"{len(groups)} places (e.g. {and_list(groups[0])}); the slope table lists every job.")


def baseline_lines(metrics: pd.DataFrame) -> list[tuple[float, str]]:
    """(loss, label) of each memoryless baseline of the tasks in `metrics` (one per task, T
    and loss_at)."""
    cfg = frames.config_frame(metrics)
    if "task" not in cfg:
        return []
    T = cfg["T"] if "T" in cfg else pd.Series(np.nan, index=cfg.index)
    loss_at = cfg["loss_at"] if "loss_at" in cfg else pd.Series("all", index=cfg.index)
    nan = pd.Series(np.nan, index=cfg.index)
    # selective_copy's baseline depends on its task.tokens and task.symbols
    sizes = zip(metrics.get("task_tokens", nan), metrics.get("task_symbols", nan), strict=True)
    out = []
    for task, t, at, (k, n) in dict.fromkeys(zip(cfg["task"], T, loss_at, sizes, strict=True)):
        if task in ("copy", "selective_copy") and not np.isfinite(t):
            continue
        given = {"tokens": int(k), "symbols": int(n)} if pd.notna(k) and pd.notna(n) else {}
        b = frames.memoryless_baseline(task, int(t) if np.isfinite(t) else 0, at, **given)
        if b is None:
            continue
        if task == "adding":
            out.append((b, "memoryless baseline: MSE 1/6\n(always predicting 1)"))
        elif task == "selective_copy":
            out.append((b, f"memoryless baseline: {given['tokens']}·log {given['symbols']} / "
                           f"{int(t)}\n= {b:.4g} (T = {int(t)} steps)" if at == "all" else
                        f"memoryless baseline: log {given['symbols']} = {b:.4g}"))
        else:
            out.append((b, f"memoryless baseline: 10·log 8 / {int(t)}\n= {b:.4g} (copy, "
                           f"T = {int(t)} steps)" if at == "all" else
                        f"memoryless baseline: log 8 = {b:.4g}"))
    return out


def diverged_seeds(metrics: pd.DataFrame | None) -> dict[str, str]:
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
