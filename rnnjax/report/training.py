"""Figures of training: loss or perplexity curves with the memoryless baselines, and the
gradient profile over training."""

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rnnjax.report import frames
from rnnjax.report.frames import (
    config_label,
    dropped_note,
    job_order,
    jobs_table,
    labels,
    profile_stats,
    top_layer,
)
from rnnjax.report.style import (
    LOG10_NORM,
    TASK_KEYS,
    TIMESTEP,
    baseline_lines,
    categorical,
    diverged_seeds,
    figure_style,
    log_y,
    min_span,
    note,
)


@figure_style
def training_curves(metrics: pd.DataFrame, df: pd.DataFrame, job: str | None = None,
                    summaries: pd.DataFrame | None = None) -> Figure:
    """Training curves (left) and the gradient profile over training of one job (right).

    Left: validation (solid) and training (dashed) perplexity, or loss where the task has no
    perplexity (log scale where it spans more than a decade), against the training step,
    median over seeds, one colour per job; the memoryless baseline of the adding (MSE 1/6) and
    copy (10·log 8 / T) tasks dotted. Right: log10 grad_norm (median over seeds) against t,
    one line per logged training step (of a stack, its top layer's, as its headline).

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
                 for value, label in baseline_lines(metrics)]
    values = long.loc[ok, "value"]
    log_scale = values.size > 0 and values.max() > 10 * values.min()  # more than a decade
    if log_scale:
        log_y(left)
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

    d = top_layer(df[df["job"] == job])
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
    note(fig, " ".join(n for n in notes if n))
    return fig


@figure_style
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
    diverged = diverged_seeds(metrics)
    for ax, (task, T) in zip(axes, panels, strict=True):
        g = m[(m["task"] == task) & (m["T"] == T) & np.isfinite(m["train_loss"])]
        g = g.groupby(["model", "train_step"], sort=False)["train_loss"].median().reset_index()
        for model, c in palette.items():
            line = g[g["model"] == model]
            if len(line):
                ax.plot(line["train_step"], line["train_loss"], color=c, lw=2, marker="o",
                        ms=3)
        base = baseline_lines(m[(m["task"] == task) & (m["T"] == T)])
        for value, _ in base:
            ax.axhline(value, color="black", ls=":", lw=1.6)
        log_y(ax)
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
