"""fig10's figure: every cell's gradient profile at initialization and after training, with its
training curves, on one task (`modern_cells`)."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rnnjax.report import frames
from rnnjax.report.frames import jobs_table, labels, predictions, profile_stats
from rnnjax.report.style import (
    STEPS_BACK,
    TASK_KEYS,
    anchored,
    baseline_lines,
    categorical,
    figure_style,
    min_span,
    note,
    x_to_data,
)

RELATIVE = "log10 ‖dL/dH_t‖ − log10 ‖dL/dH_T‖"


def _relative(df: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Median over seeds (and interquartile band) of log10 ‖dL/dH_t‖ minus its value at t = T,
    per job, at training step `step` (None: each job's last), against steps back."""
    if step is None:
        last = df.groupby("job")["train_step"].transform("max")
        df = df[df["train_step"] == last]
    else:
        df = df[df["train_step"] == step]
    stats = profile_stats(df)
    T_of = frames.job_T(df)
    stats["T"] = stats["job"].map(T_of)
    stats["steps_back"] = stats["T"] - stats["t"]
    end = stats[stats["t"] == stats["T"]].set_index("job")["median"]
    for q in ("q25", "median", "q75"):
        stats[q] = stats[q] - stats["job"].map(end)
    return stats


def _profiles(ax, stats: pd.DataFrame, color_of: dict[str, str], **line) -> None:
    for job, g in stats.sort_values("steps_back").groupby("job", sort=False):
        ok = np.isfinite(g["median"])
        ax.plot(g["steps_back"][ok], g["median"][ok], color=color_of[job], **line)
        if line.get("lw", 2) >= 2:
            band = g[["q25", "q75"]].where(np.isfinite(g[["q25", "q75"]]))
            ax.fill_between(g["steps_back"], band["q25"], band["q75"], color=color_of[job],
                            alpha=0.15, lw=0)


@figure_style
def modern_cells(df: pd.DataFrame, summaries: pd.DataFrame, metrics: pd.DataFrame | None = None
                 ) -> Figure:
    """Every cell on one task: its gradient profile at initialization with the loss at the last
    step and its prediction dashed where one applies (top left; the jobs that did not train),
    the profile of the trained networks before (thin) and after training (thick) with the loss
    over all steps (top right; the jobs that trained), and their validation loss with the task's
    memoryless baseline and their validation accuracy (bottom). One colour per cell.

    Args:
      df, summaries: `load_sweep` and `load_summaries` frames of the figure's jobs.
      metrics: their `load_metrics` frame (None: no job trained; the bottom row stays empty).
    """
    jobs = jobs_table(df)
    # one colour per cell (and its options), the same in every panel: the jobs at
    # initialization and the trained ones differ in their loss and training keys
    options = jobs["cell_label"].fillna("") if "cell_label" in jobs else ""
    jobs["model"] = (jobs["cell"].astype(str) + (" " + options).where(options != "", "")
                     if "cell" in jobs else labels(jobs.drop(columns=["label", "job"]),
                                                    exclude=TASK_KEYS))
    palette = categorical(jobs["model"])
    color_of = {j: palette[m] for j, m in zip(jobs["job"], jobs["model"], strict=True)}
    trained = df.groupby("job")["train_step"].max()
    at_init, after = trained.index[trained == 0], trained.index[trained > 0]

    fig = Figure(figsize=(15, 10.5), layout="constrained")
    (init_ax, after_ax), (loss_ax, acc_ax) = fig.subplots(2, 2)
    notes = []
    init = _relative(df[df["job"].isin(at_init)], 0)
    _profiles(init_ax, init, color_of, lw=2)
    pred = predictions(summaries) if len(at_init) else None
    drawn = 0
    if pred is not None:
        for job, g in init.groupby("job"):
            if job in pred.index and pred.loc[job, "applies"]:
                line = anchored(g.sort_values("steps_back"), float(pred.loc[job, "slope"]))
                if line is not None:
                    init_ax.plot(line["steps_back"], line["y"], ls="--", lw=1.3,
                                 color=color_of[job])
                    drawn += 1
    init_ax.set_title("at initialization, loss at the last step")
    before = _relative(df[df["job"].isin(after)], 0)
    final = _relative(df[df["job"].isin(after)])
    _profiles(after_ax, before, color_of, lw=0.9, alpha=0.7, ls=":")
    _profiles(after_ax, final, color_of, lw=2)
    steps = ", ".join(sorted({str(int(s)) for s in trained[after]}))
    after_ax.set_title(f"loss over all steps: before (dotted), after {steps} steps")
    for ax, stats in ((init_ax, init), (after_ax, final)):
        ax.set_xlabel(STEPS_BACK)
        ax.set_ylabel(RELATIVE)
        fin = stats[np.isfinite(stats["median"])]
        x_to_data(ax, float(fin["steps_back"].max()) if len(fin) else np.nan)
        min_span(ax)

    if metrics is not None and len(metrics):
        m = metrics[metrics["job"].isin(after)]
        for column, ax in (("val_loss", loss_ax), ("val_accuracy", acc_ax)):
            if column not in m:
                continue
            med = m.groupby(["job", "train_step"])[column].median().reset_index()
            for job, g in med.groupby("job"):
                ax.plot(g["train_step"], g[column], color=color_of[job], lw=2)
            ax.set_xlabel("training step")
            ax.set_ylabel(column.replace("_", " ") + " (median over seeds)")
        for value, label in baseline_lines(m):
            loss_ax.axhline(value, color="black", ls=":", lw=1.5, label=label)
        loss_ax.set_yscale("log")
        if loss_ax.get_legend_handles_labels()[0]:
            loss_ax.legend(frameon=False, fontsize=10)
        acc_ax.set_ylim(-0.02, 1.02)
        loss_ax.set_title("validation loss")
        acc_ax.set_title("validation accuracy (symbols recalled)")
    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in palette.items()]
    if drawn:
        handles.append(Line2D([], [], color="gray", ls="--", lw=1.3,
                              label="exact prediction where one applies\n(anchored at T/4 "
                                    "steps back)"))
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=10)
    fig.suptitle("Every cell at initialization and after training")
    note(fig, " ".join(n for n in notes if n))
    return fig
