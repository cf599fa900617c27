"""Figures of a run or sweep: pure functions from the frames of `rnnjax.results` (`load_sweep`,
`load_summaries`, `load_metrics`) to matplotlib Figures, drawn with seaborn.

The figures are `matplotlib.figure.Figure` objects made without pyplot, so nothing global is
kept: save them with `fig.savefig(...)`, or let a notebook show them.

Quantiles over seeds are taken of log10 grad_norm with an underflowed norm (0) as -inf and an
overflowed one as +inf: order statistics, so a seed whose norm underflowed still counts. A
median that is not finite is not plotted, and the figure says how many it left out.
"""

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rnnjax.cells import ACTIVATIONS
from rnnjax.theory import mean_field

LOG10_NORM = "log10 ‖dL/dH_t‖ (decades; median over seeds)"
STEPS_BACK = "steps back from the end, T − t (steps)"

SLOPE = "headline.log10_slope_per_step_back"
MF = "headline.theory.mean_field."
PASCANU = "headline.theory.pascanu_log10_bound_per_step"
LYAPUNOV = "headline.theory.lyapunov_top_log10_per_step"

# Config keys in label order: canonical name (the column of load_sweep / load_metrics frames)
# -> (the column of load_summaries frames, the format of one value).
_KEYS = {
    "activation": ("config.activation.name", "{}"),
    "init": ("config.init.name", "{}"),
    "init_std": ("config.init.std", "std={:g}"),
    "init_gain": ("config.init.gain", "g={:g}"),
    "init_radius": ("config.init.radius", "ρ={:g}"),
    "task": ("config.task.name", "{}"),
    "vocab_size": ("config.task.vocab_size", "V={:g}"),
    "seq_len": ("config.seq_len", "T={:g}"),
    "hidden_size": ("config.hidden_size", "H={:g}"),
    "batch_size": ("config.batch_size", "B={:g}"),
    "loss_at": ("config.probe.loss_at", "loss at {}"),
    "dtype": ("config.dtype", "{}"),
    "optimizer": ("config.train.optimizer", "{}"),
    "lr": ("config.train.lr", "lr={:g}"),
    "clip": ("config.train.clip", "clip={:g}"),
    "bptt": ("config.train.bptt", "{} BPTT"),
    "truncate": ("config.train.truncate", "k={:g}"),
    "steps": ("config.train.steps", "{:g} steps"),
    "epochs": ("config.train.epochs", "{:g} epochs"),
}
_INIT_PARAMS = ("init_std", "init_gain", "init_radius")
_ALWAYS = ("activation", "init")  # in every label; the other keys only where they vary
_MISSING = {"clip": "no clip"}  # what a missing value says; other keys are then left out

# Legend titles of the columns `decay_curves` can colour by.
NAMES = {
    "seq_len": "sequence length T",
    "init_gain": "gain g",
    "init_std": "init std",
    "init_radius": "spectral radius ρ",
    "init": "initialization",
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


def config_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The config columns of `df` under their canonical names (`seq_len`, `init_gain`, `clip`,
    ...), from a `load_sweep` / `load_metrics` frame or a `load_summaries` one."""
    cols = {}
    for key, (summary_col, _) in _KEYS.items():
        if key in df:
            cols[key] = df[key]
        elif summary_col in df:
            cols[key] = df[summary_col]
    return pd.DataFrame(cols, index=df.index)


def _format(values: pd.Series, key: str) -> pd.Series:
    fmt, missing = _KEYS[key][1], _MISSING.get(key, "")
    return values.map(lambda v: missing if pd.isna(v) else fmt.format(v))


def _labels(cfg: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.Series:
    """Labels from canonical config columns: activation and init (with its parameter) always,
    the other keys where they vary, the keys in `exclude` never."""
    text = {k: _format(cfg[k], k) for k in _KEYS if k in cfg and k not in set(exclude)}
    if "init" in text:  # the init and its parameter are one piece: "gaussian g=1.5"
        for p in _INIT_PARAMS:
            if p in text:
                text["init"] = (text["init"] + " " + text.pop(p)).str.strip()
    keep = [s for k, s in text.items() if k in _ALWAYS or s.nunique() > 1]
    return pd.Series([" / ".join(p for p in row if p) for row in zip(*keep, strict=True)]
                     if keep else "", index=cfg.index)


def config_label(df: pd.DataFrame) -> pd.Series:
    """A short label per row from its config, e.g. "tanh / gaussian g=1.5 / T=64".

    Activation and init (with its parameter) are always named, every other config key where it
    varies across `df`. Works on `load_sweep`, `load_metrics` and `load_summaries` frames (only
    the latter know the training options: clip, lr, ...). Jobs whose labels would coincide get
    their job name appended.

    Args:
      df: rows with config columns (and a `job` column, where jobs are to be told apart).

    Returns:
      The labels, indexed like `df`.
    """
    cfg = config_frame(df)
    ids = cfg.groupby(list(cfg.columns), dropna=False, sort=False).ngroup()
    first = ~ids.duplicated()
    labels = ids.map(dict(zip(ids[first], _labels(cfg[first]), strict=True)))
    if "job" in df:
        shared = df.groupby(labels)["job"].transform("nunique") > 1
        labels = labels.where(~shared, labels + " (job " + df["job"].astype(str) + ")")
    return labels


def _quantile(values: np.ndarray, q: float) -> np.ndarray:
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


def profile_stats(df: pd.DataFrame, by: Sequence[str] = ("job",)) -> pd.DataFrame:
    """Quartiles over seeds of log10 grad_norm, per (*by, t).

    Args:
      df: a `load_sweep` frame with one row per (*by, t, seed).
      by: the columns that name one profile.

    Returns:
      One row per (*by, t): those columns, t, q25, median, q75 (log10; -inf where the quantile
      underflowed to 0, inf where it overflowed, NaN where undefined).
    """
    keys = [*by, "t"]
    with np.errstate(divide="ignore"):
        lg = np.log10(df["grad_norm"].to_numpy(np.float64))
    wide = df[[*keys, "seed"]].assign(lg=lg).set_index([*keys, "seed"])["lg"].unstack("seed")
    out = wide.index.to_frame(index=False)
    for name, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        out[name] = _quantile(wide.to_numpy(), q)
    return out


def _dropped_note(stats: pd.DataFrame, what: str = "(configuration, t)") -> str:
    """How many medians of `profile_stats` are not plotted, and why ("" when none)."""
    m = stats["median"].to_numpy()
    under = int(np.isneginf(m).sum())
    other = int((~np.isfinite(m)).sum()) - under
    parts = [text for n, text in ((under, f"{under} underflowed to 0 (log10 = −∞)"),
                                  (other, f"{other} overflowed to inf or are NaN")) if n]
    if not parts:
        return ""
    return f"Not plotted: of {len(m)} {what} medians over seeds, " + " and ".join(parts) + "."


def _note(fig: Figure, text: str) -> None:
    """A footnote in the bottom left corner, with room made for it."""
    if text:
        room = 0.35 / fig.get_figheight()
        fig.get_layout_engine().set(rect=(0, room, 1, 1 - room))
        fig.text(0.005, 0.005, text, ha="left", va="bottom", fontsize=8, color="dimgray")


def _log_y(ax: Axes) -> None:
    """A log y axis with plain tick labels at 1, 2 and 5 times powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _activations(names: Iterable[str]) -> list[str]:
    """The distinct activations in the order of `ACTIVATIONS`, unknown names last."""
    names = set(names)
    return [a for a in ACTIVATIONS if a in names] + sorted(names - set(ACTIVATIONS))


def job_T(df: pd.DataFrame) -> pd.Series:
    """Each job's number of timesteps T, indexed by job: the `T` column (seq_len, or
    seq_len + 20 for task=copy), or the largest t in frames written before it existed."""
    return df.groupby("job")["T" if "T" in df else "t"].max()


def _jobs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job of a `load_sweep` frame: job, label and the canonical config columns,
    sorted by activation (in `ACTIVATIONS` order), then config, then job name."""
    first = df.drop_duplicates("job")
    jobs = config_frame(first).assign(job=first["job"], label=config_label(first))
    rank = {a: i for i, a in enumerate(_activations(jobs["activation"]))}
    natural = {j: i for i, j in enumerate(job_order(jobs["job"]))}
    keys = [k for k in _KEYS if k in jobs and k != "activation"]
    return (jobs.assign(_act=jobs["activation"].map(rank), _job=jobs["job"].map(natural))
            .sort_values(["_act", *keys, "_job"]).drop(columns=["_act", "_job"])
            .reset_index(drop=True))


def heatmap(df: pd.DataFrame) -> Figure:
    """log10 grad_norm at initialization (median over seeds) over timestep × configuration.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.

    Returns:
      The figure: one row per job, cells whose median underflowed to 0 in black, those that
      overflowed (or are NaN) in gold, steps a shorter sequence does not have hatched.
    """
    d = df[df["train_step"] == 0]
    jobs = _jobs(d)
    stats = profile_stats(d)
    m = stats["median"]
    stats["state"] = np.select([np.isfinite(m), np.isneginf(m)], [0.0, 1.0], 2.0)
    median = stats.pivot(index="job", columns="t", values="median").reindex(jobs["job"])
    state = stats.pivot(index="job", columns="t", values="state").reindex(jobs["job"])
    median.index = state.index = jobs["label"]
    at_end = stats.sort_values("t").groupby("job")["median"].last()  # each job's t = T
    center = float(np.median(at_end[np.isfinite(at_end)])) if np.isfinite(at_end).any() else 0.0
    finite = median.where(state == 0)
    half = float(np.nanmax(np.abs(finite.to_numpy() - center), initial=0.0)) or 1.0  # white: center

    fig = Figure(figsize=(11, 3.2 + 0.3 * len(jobs)), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(finite, cmap="RdBu_r", vmin=center - half, vmax=center + half, ax=ax,
                xticklabels="auto", yticklabels=True,
                cbar_kws={"label": "log10 ‖dL/dH_t‖ (decades)"})
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
                  frameon=False, fontsize=8)
    ax.set_xlabel("timestep t (1 … T; steps)")
    ax.set_ylabel("configuration")
    fig.suptitle("Gradient norm ‖dL/dH_t‖ at initialization, by timestep and configuration\n"
                 f"(white: log10 norm {center:.2g}, the median over jobs at their last step t = T)")
    _note(fig, _dropped_note(stats))
    return fig


def _hue_palette(values: pd.Series, text: pd.Series) -> dict[str, tuple]:
    """Colours for the distinct `text` values, ordered by `values`: sequential when numeric."""
    numeric = pd.api.types.is_numeric_dtype(values)
    ordered = text.iloc[np.argsort(values.to_numpy(), kind="stable")] if numeric else sorted(text)
    order = list(dict.fromkeys(ordered))
    palette = sns.color_palette("flare" if numeric else "colorblind", len(order))
    return dict(zip(order, palette, strict=True))


def _anchored_prediction(g: pd.DataFrame, slope: float) -> pd.DataFrame | None:
    """The line with `slope` (log10 per step back) through the measured median at steps back
    T // 4 (the start of the fit; the nearest finite median where that one is not)."""
    finite = g[np.isfinite(g["median"])]
    if finite.empty or not np.isfinite(slope):
        return None
    k0 = int(g["T"].iloc[0]) // 4
    anchor = finite.iloc[int(np.argmin(np.abs(finite["steps_back"].to_numpy() - k0)))]
    k = np.sort(g["steps_back"].to_numpy())
    return pd.DataFrame({"steps_back": k,
                         "y": anchor["median"] + slope * (k - anchor["steps_back"])})


def decay_curves(df: pd.DataFrame, summaries: pd.DataFrame | None = None,
                 hue: str = "seq_len") -> Figure:
    """log10 grad_norm at initialization against steps back from the end, T − t.

    One panel per activation (columns) and per remaining configuration (rows: what varies
    besides activation and `hue`), one line per job coloured by `hue`: the median over seeds,
    with the interquartile range over seeds as a band.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.
      summaries: the `load_summaries` frame of the same sweep: each job's mean-field prediction
        is drawn as a dashed line with slope log10 sqrt(chi_1) per step back, anchored at the
        measured median where the fit starts (T − t = T // 4).
      hue: the config column of `df` that colours the lines ("seq_len", "init_gain", "init").

    Returns:
      The figure.
    """
    d = df[df["train_step"] == 0]
    jobs = _jobs(d)
    jobs["row"] = _labels(jobs, exclude=("activation", hue))
    jobs["hue"] = _format(jobs[hue], hue).replace("", "n/a")
    palette = _hue_palette(jobs[hue], jobs["hue"])
    stats = profile_stats(d).merge(jobs[["job", "activation", "row", "hue"]], on="job")
    stats["T"] = stats["job"].map(job_T(d))
    stats["steps_back"] = stats["T"] - stats["t"]
    acts, rows = _activations(jobs["activation"]), list(dict.fromkeys(jobs["row"]))
    keys = [(row, act) for row in rows for act in acts]
    # a grid of rows × activations; a single row wraps into two columns
    ncols = len(acts) if len(rows) > 1 else min(len(acts), 2)
    nrows = -(-len(keys) // ncols)

    fig = Figure(figsize=(3.5 + 4.2 * ncols, 1.5 + 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    panels: dict[tuple[str, str], Axes] = {}
    for ax, (row, act) in zip(axes, keys, strict=False):
        panel = stats[(stats["row"] == row) & (stats["activation"] == act)]
        ax.set_title(f"{act} · {row}" if row else act)
        if panel.empty:
            ax.text(0.5, 0.5, "no job", ha="center", va="center", transform=ax.transAxes)
            continue
        panels[row, act] = ax
        sns.lineplot(data=panel[np.isfinite(panel["median"])], x="steps_back", y="median",
                     hue="hue", palette=palette, units="job", estimator=None, legend=False,
                     ax=ax)
        for _, g in panel.sort_values("steps_back").groupby("job"):
            band = g[["q25", "q75"]].where(np.isfinite(g[["q25", "q75"]]))
            ax.fill_between(g["steps_back"], band["q25"], band["q75"],
                            color=palette[g["hue"].iloc[0]], alpha=0.2, lw=0)
        ax.set(xlabel="", ylabel="")
    for ax in axes[len(keys) - ncols:len(keys)]:  # the lowest visible panel of each column
        ax.tick_params(labelbottom=True)
        ax.set_xlabel(STEPS_BACK)
    for ax in axes[:len(keys):ncols]:
        ax.set_ylabel(LOG10_NORM)

    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in palette.items()]
    handles.append(Patch(color="gray", alpha=0.3, label="interquartile range over seeds"))
    if summaries is not None:
        axes[0].set_ylim(axes[0].get_ylim())  # predictions may not widen the axes
        slope = summaries.set_index("job")[MF + "log10_factor_per_step"]
        for job, g in stats.groupby("job"):
            line = _anchored_prediction(g, float(slope.get(job, np.nan)))
            if line is not None:
                panels[g["row"].iloc[0], g["activation"].iloc[0]].plot(
                    line["steps_back"], line["y"], ls="--", lw=1.2,
                    color=palette[g["hue"].iloc[0]])
        handles.append(Line2D([], [], color="gray", ls="--",
                              label="mean-field prediction\n(slope log10 √χ₁ per step back,\n"
                                    "anchored at T − t = T/4)"))
    fig.legend(handles=handles, title=NAMES.get(hue, hue), loc="outside right center")
    fig.suptitle("How ‖dL/dH_t‖ changes going back in time, at initialization "
                 "(lines: median over seeds)")
    _note(fig, _dropped_note(stats))
    return fig


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
    return pd.DataFrame({
        "job": summaries["job"],
        "activation": summaries["config.activation.name"],
        "init": summaries["config.init.name"],
        "slope": summaries[SLOPE].astype(float),
        "gain": summaries[MF + "gain"].astype(float),
        "input_var": summaries[MF + "input_var"].astype(float),
        "bias_var": summaries[MF + "bias_var"].astype(float),
        "lyapunov": summaries[LYAPUNOV].astype(float),
    })


def _left_out(n: int, why: str) -> str:
    return f"Not plotted: {n} job(s) {why}." if n else ""


def phase_diagram(summaries: pd.DataFrame) -> Figure:
    """The measured per-step factor of ||dL/dH_t|| against the gain, beside mean-field theory.

    Points: 10**slope per job (the measured slope, median over seeds) against its effective
    gain g = sqrt(H mean W_hh^2). Lines: the mean-field factor sqrt(chi_1(g)) per activation,
    with the median input and bias variance of that activation's jobs. Dotted: the critical
    gain (chi_1 = 1) where it lies in the plotted range.

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      The figure.
    """
    data = _summary_points(summaries)
    data["factor"] = 10.0 ** data["slope"]
    ok = np.isfinite(data["factor"]) & (data["factor"] > 0) & np.isfinite(data["gain"])
    acts = _activations(data["activation"])
    palette = dict(zip(acts, sns.color_palette("colorblind", len(acts)), strict=True))
    gains = data["gain"][np.isfinite(data["gain"])]  # theory also where the slope is not
    grid = np.linspace(0.8 * gains.min(), 1.2 * gains.max(), 121)

    fig = Figure(figsize=(9.5, 5.5), layout="constrained")
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
    sns.lineplot(data=pd.concat(curves), x="gain", y="factor", hue="activation",
                 palette=palette, legend=False, ax=ax)
    sns.scatterplot(data=data[ok], x="gain", y="factor", hue="activation", hue_order=acts,
                    palette=palette, style="init" if data["init"].nunique() > 1 else None,
                    s=60, zorder=3, ax=ax)
    ax.axhline(1.0, color="black", lw=0.8, ls="-.")
    _log_y(ax)
    handles, labels = ax.get_legend_handles_labels()
    extra = [Line2D([], [], color="gray", marker="o", ls="none",
                    label="measured: 10^slope (median over seeds)"),
             Line2D([], [], color="gray", label="mean field: √χ₁(g)"),
             Line2D([], [], color="black", lw=0.8, ls="-.",
                    label="factor 1: neither vanishing\nnor exploding")]
    if critical:
        extra.append(Line2D([], [], color="gray", ls=":",
                            label="critical gain (χ₁ = 1):\n" + ", ".join(critical)))
    ax.legend(handles=handles + extra, labels=labels + [h.get_label() for h in extra],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel("gain g = √(H · mean W_hh²) (dimensionless)")
    ax.set_ylabel("factor of ‖dL/dH_t‖ per step back (×/step, log scale)")
    ax.set_title("Vanishing (< 1) or exploding (> 1): measured per-step factor against gain,\n"
                 "with the mean-field prediction")
    _note(fig, _left_out(int((~ok).sum()), "with no finite measured slope"))
    return fig


def slope_vs_lyapunov(summaries: pd.DataFrame) -> Figure:
    """The measured slope against the top Lyapunov exponent (both log10 per step), with y = x.

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      The figure.
    """
    data = _summary_points(summaries)
    ok = np.isfinite(data["slope"]) & np.isfinite(data["lyapunov"])
    acts = _activations(data["activation"])
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    sns.scatterplot(data=data[ok], x="slope", y="lyapunov", hue="activation", hue_order=acts,
                    palette=dict(zip(acts, sns.color_palette("colorblind", len(acts)),
                                     strict=True)),
                    style="init" if data["init"].nunique() > 1 else None, s=60, zorder=3,
                    ax=ax)
    both = data.loc[ok, ["slope", "lyapunov"]].to_numpy()
    lo, hi = (both.min(), both.max()) if both.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo) + 1e-3
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", ls="--", lw=1,
            label="y = x: the gradient changes\nat the top exponent's rate")
    ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
    ax.axvline(0, color="lightgray", lw=0.8, zorder=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel("measured slope of log10 ‖dL/dH_t‖ per step back (decades/step)")
    ax.set_ylabel("top Lyapunov exponent λ₁ / ln 10 (decades/step)")
    ax.set_title("Measured gradient slope against the top Lyapunov exponent\n"
                 "of the input-driven hidden dynamics")
    _note(fig, _left_out(int((~ok).sum()), "with a non-finite slope or exponent"))
    return fig


def training_curves(metrics: pd.DataFrame, df: pd.DataFrame, job: str | None = None,
                    summaries: pd.DataFrame | None = None) -> Figure:
    """Training curves (left) and the gradient profile over training of one job (right).

    Left: validation (solid) and training (dashed) perplexity, or loss where the task has no
    perplexity (log scale where it spans more than a decade), against the training step,
    median over seeds, one colour per job. Right: log10 grad_norm (median over seeds) against
    t, one line per logged training step.

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

    fig = Figure(figsize=(14, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    sns.lineplot(data=long[ok], x="train_step", y="value", hue="configuration",
                 hue_order=[label_of[j] for j in job_order(metrics["job"])], style="split",
                 style_order=list(splits.values()), estimator="median", errorbar=None, ax=left)
    values = long.loc[ok, "value"]
    log_scale = values.size > 0 and values.max() > 10 * values.min()  # more than a decade
    if log_scale:
        _log_y(left)
    left.set_xlabel("training step (optimizer updates)")
    loss = "loss (squared error)" if set(metrics["task"]) == {"adding"} else "loss"
    left.set_ylabel(("perplexity" if kind == "ppl" else loss)
                    + (" (log scale)" if log_scale else ""))
    left.set_title(f"Training: {'perplexity' if kind == 'ppl' else 'loss'}, median over seeds")
    sns.move_legend(left, "upper center", bbox_to_anchor=(0.5, -0.15), frameon=False,
                    fontsize=8)

    d = df[df["job"] == job]
    stats = profile_stats(d, by=("train_step",))
    steps = sorted(stats["train_step"].unique())
    sns.lineplot(data=stats[np.isfinite(stats["median"])], x="t", y="median", hue="train_step",
                 palette="viridis", legend="full" if len(steps) <= 12 else "brief", ax=right)
    sns.move_legend(right, "upper left", bbox_to_anchor=(1.01, 1), title="training step",
                    frameon=False, fontsize=8)
    right.set_xlabel("timestep t (steps)")
    right.set_ylabel(LOG10_NORM)
    right.set_title(f"Gradient profile during training: {label_of.get(job, job)}")
    fig.suptitle("Training, and how the per-timestep gradient changes while training")
    notes = [f"Not plotted: {int((~ok).sum())} seed-step losses that are NaN/inf (diverged)."
             if (~ok).any() else "", _dropped_note(stats, "(training step, t)")]
    _note(fig, " ".join(n for n in notes if n))
    return fig


def slope_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers per job, in natural job order.

    Args:
      summaries: a `load_summaries` frame.

    Returns:
      Columns: job, configuration, measured slope, mean-field prediction, relative error of the
      measurement against it, Pascanu bound, top Lyapunov exponent (all log10 per step back),
      underflowed points (n_underflow), status.
    """
    s = summaries.assign(configuration=config_label(summaries))
    s = s.set_index("job").loc[job_order(s["job"])].reset_index()
    columns = {
        "job": "job",
        "configuration": "configuration",
        SLOPE: "measured slope (log10/step back)",
        MF + "log10_factor_per_step": "mean field (log10/step)",
        MF + "relative_error": "relative error",
        PASCANU: "Pascanu bound (log10/step)",
        LYAPUNOV: "top Lyapunov (log10/step)",
        "headline.n_underflow": "underflowed points",
        "status": "status",
    }
    return s.reindex(columns=list(columns)).rename(columns=columns)


def markdown_table(table: pd.DataFrame) -> str:
    """A markdown table: numbers to 4 significant digits, numeric columns right-aligned."""
    def cell(v) -> str:
        if pd.isna(v):
            return "n/a"
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def training_profiles(df: pd.DataFrame, summaries: pd.DataFrame | None = None) -> Figure:
    """The gradient profile of every job at each logged training step, one panel per job.

    log10 ‖dL/dH_t‖ (median over seeds) against t, one line per training step (0: at
    initialization), as in Arjovsky et al.'s figure of ‖dC/dh_t‖ before and after training.

    Args:
      df: a `load_sweep` frame of jobs that trained.
      summaries: the `load_summaries` frame, for labels that name the training options.

    Returns:
      The figure.
    """
    jobs = job_order(df["job"])
    source = df.drop_duplicates("job") if summaries is None else summaries
    label_of = dict(zip(source["job"], config_label(source), strict=True))
    fig = Figure(figsize=(5 * len(jobs), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(jobs), sharey=True))
    notes = []
    for ax, job in zip(axes, jobs, strict=True):
        stats = profile_stats(df[df["job"] == job], by=("train_step",))
        sns.lineplot(data=stats[np.isfinite(stats["median"])], x="t", y="median",
                     hue="train_step", palette="viridis", ax=ax)
        ax.set_title(label_of.get(job, job), fontsize=10)
        ax.set_xlabel("timestep t (steps)")
        ax.set_ylabel(LOG10_NORM)
        ax.legend(title="training step", fontsize=8, frameon=False)
        notes.append(_dropped_note(stats, f"{label_of.get(job, job)}: (training step, t)"))
    fig.suptitle("Gradient profile at initialization and after training")
    _note(fig, " ".join(n for n in notes if n))
    return fig
