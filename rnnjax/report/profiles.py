"""Figures of gradient profiles: ‖dL/dH_t‖ against steps back (`decay_curves`), over t before
and after training (`before_after`) and of every cell at initialization (`cells_at_init`)."""

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from rnnjax.report import frames
from rnnjax.report.frames import (
    dropped_note,
    job_T,
    jobs_table,
    labels,
    layer_jobs,
    predictions,
    profile_stats,
)
from rnnjax.report.style import (
    LEGEND_INCHES,
    LOG10_NORM,
    SEED_LINES,
    STEPS_BACK,
    TASK_KEYS,
    TIMESTEP,
    anchored,
    categorical,
    diverged_seeds,
    figure_style,
    hue_palette,
    hue_title,
    key_text,
    min_span,
    no_prediction_note,
    note,
    x_to_data,
)

LEGEND_WIDTH = 40  # characters per line of a prediction's name in the legend


def _grid(n: int, nrows: int) -> tuple[int, int]:
    """(rows, columns) of a panel grid: one row of up to 5 panels, else about square."""
    if nrows > 1:
        return nrows, n // nrows
    if n <= 5:
        return 1, n
    ncols = math.ceil(n / 2)
    return 2, ncols


@figure_style
def decay_curves(df: pd.DataFrame, summaries: pd.DataFrame | None = None, hue: str = "T",
                 row: str | None = None) -> Figure:
    """log10 grad_norm at initialization against steps back from the end, T − t.

    One panel per model (columns: the activation of a vanilla RNN, else the cell) and per row
    (`row`'s values, or what varies besides the model and `hue`), one line per job coloured by
    `hue`: the median over seeds, with the interquartile range over seeds as a band. The x-range
    ends where the last finite median does; rows share their y-range. Each layer of a stack is
    a line of its own (`layer_jobs`): `hue="layer"` colours them by layer.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.
      summaries: the `load_summaries` frame of the same sweep: where a prediction applies
        (`rnnjax.report.frames.predictions`) it is drawn dashed with its slope per step back,
        anchored at the measured median where the fit starts (T − t = T // 4).
      hue: the config column that colours the lines ("T", "init_gain", "init", "cell",
        "layer").
      row: the config column whose values make the rows ("init": the init with its
        parameter); None: every other config key that varies.

    Returns:
      The figure.
    """
    d = layer_jobs(df[df["train_step"] == 0])
    summaries = layer_jobs(summaries) if summaries is not None else None
    jobs = jobs_table(d)
    if hue not in jobs:
        hue = "seq_len" if "seq_len" in jobs else "init"
    jobs["model"] = frames.model(jobs)
    jobs["hue"] = key_text(jobs, hue)
    own = jobs["hue"] != ""  # a job without the key: its configuration's label, never "n/a"
    jobs["hue"] = jobs["hue"].where(own, jobs["label"])
    title = hue_title(hue) + ("" if own.all() else "\n(else the configuration)")
    jobs["row"] = (key_text(jobs, row) if row is not None
                   else labels(jobs.drop(columns=["label", "model", "hue", "job"]),
                               exclude=("activation", "cell", hue)))
    if row is None and jobs.groupby("model", sort=False)["row"].nunique().max() == 1:
        # Rows that only tell models apart (the init of the cells that take one): one row,
        # the row's text in the model's title.
        jobs["model"] = jobs["model"].where(jobs["row"] == "",
                                            jobs["model"] + " · " + jobs["row"])
        jobs["row"] = ""
    palette = hue_palette(jobs[hue], jobs["hue"])
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
    x_to_data(axes[0], float(finite["steps_back"].max()) if len(finite) else math.nan)
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
            line = anchored(g, float(pred.loc[job, "slope"]))
            if line is not None:
                panels[g["row"].iloc[0], g["model"].iloc[0]].plot(
                    line["steps_back"], line["y"], ls="--", lw=1.4,
                    color=palette[g["hue"].iloc[0]])
                drawn += 1
        if drawn:
            # a cell's own text may be long (a plugin's): wrapped, or the legend outgrows the
            # figure and the layout collapses
            names = sorted({textwrap.fill(n, LEGEND_WIDTH)
                            for n in pred.loc[pred["applies"], "name"]})
            handles.append(Line2D([], [], color="gray", ls="--",
                                  label="prediction:\n" + ",\n".join(names)
                                  + "\n(anchored at T − t = T/4)"))
    fig.legend(handles=handles, title=title, loc="outside right center")
    # wrapped to the figure's width: a title wider than the figure widened the saved PNG
    # (bbox_inches="tight") with blank space
    fig.suptitle("How ‖dL/dH_t‖ changes going back in time, at initialization "
                 "(lines: median over seeds)", wrap=True)
    notes = [no_prediction_note(summaries, drawn), dropped_note(stats)]
    note(fig, "\n".join(n for n in notes if n))
    return fig


@figure_style
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
      The figure (each layer of a stack a job of its own: `layer_jobs`).
    """
    df = layer_jobs(df)
    jobs = jobs_table(df if summaries is None else layer_jobs(summaries))
    label_of = dict(zip(jobs["job"], jobs["label"], strict=True)) | (names or {})
    palette = categorical(label_of[j] for j in jobs["job"])
    last = int(df["train_step"].max())
    diverged = diverged_seeds(metrics)

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
        x_to_data(ax, float(df["t"].max()), 1.0)
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
    note(fig, " ".join(n for n in notes if n))
    return fig


@figure_style
def cells_at_init(df: pd.DataFrame, summaries: pd.DataFrame | None = None) -> Figure:
    """Every cell's gradient profile at initialization, one panel per task (rows) and T
    (columns): log10 ‖dL/dH_t‖ relative to its value at t = T (decades below the gradient at
    the loss step), median over seeds with the interquartile band, against steps back; the
    prediction dashed where one applies.

    Args:
      df: a `load_sweep` frame; only its train_step == 0 rows are used.
      summaries: the `load_summaries` frame of the same jobs (for the predictions).

    Returns:
      The figure (each layer of a stack a line of its own: `layer_jobs`).
    """
    d = layer_jobs(df[df["train_step"] == 0])
    summaries = layer_jobs(summaries) if summaries is not None else None
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
        x_to_data(axes[0, j], float(fin["steps_back"].max()) if len(fin) else math.nan)
    min_span(axes[0, 0])
    if pred is not None:
        for ax in axes.ravel():
            ax.set_ylim(ax.get_ylim())
        for job, g in stats.groupby("job"):
            if job in pred.index and pred.loc[job, "applies"]:
                line = anchored(g.sort_values("steps_back"), float(pred.loc[job, "slope"]))
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
    note(fig, dropped_note(stats))
    return fig
