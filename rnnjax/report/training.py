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


DYNAMICS = ("log10_slope_per_step_back", "predicted_log10_slope_per_step_back",
            "lyapunov_top_log10_per_step")  # metrics.parquet's columns of each logged step


@figure_style
def slope_during_training(metrics: pd.DataFrame, summaries: pd.DataFrame | None = None
                          ) -> Figure:
    """The headline slope against the training step, per job (median over seeds): measured
    (solid, points), the theory's prediction where one applies (dashed) and the top Lyapunov
    exponent (dotted), from step 0 (the summary's headline at initialization) to the end.

    Args:
      metrics: a `load_metrics` frame with the dynamics columns (`DYNAMICS`).
      summaries: the `load_summaries` frame, for step 0 and the jobs' labels.
    """
    data = metrics[["job", "seed", "train_step", *DYNAMICS]]
    if summaries is not None:  # step 0: the headline at initialization
        s = summaries[summaries["job"].isin(data["job"])]
        pred = frames.predictions(s).reindex(s["job"])
        init = pd.DataFrame({
            "job": s["job"].to_numpy(), "seed": -1, "train_step": 0,
            DYNAMICS[0]: pd.to_numeric(s.get(frames.SLOPE), errors="coerce").to_numpy(),
            DYNAMICS[1]: pred["slope"].to_numpy(dtype=float),
            DYNAMICS[2]: pd.to_numeric(s.get(frames.LYAPUNOV), errors="coerce").to_numpy()})
        data = pd.concat([init, data], ignore_index=True)
    med = data.groupby(["job", "train_step"], sort=False)[list(DYNAMICS)].median().reset_index()
    jobs = job_order(med["job"])
    source = (summaries[summaries["job"].isin(jobs)] if summaries is not None
              else med.drop_duplicates("job"))
    label_of = (dict(zip(source["job"], config_label(source), strict=True))
                if summaries is not None else {j: j for j in jobs})
    palette = categorical([label_of[j] for j in jobs])
    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    for job in jobs:
        d = med[med["job"] == job].sort_values("train_step")
        color = palette[label_of[job]]
        ax.plot(d["train_step"], d[DYNAMICS[0]], marker="o", color=color, label=label_of[job])
        ax.plot(d["train_step"], d[DYNAMICS[1]], ls="--", color=color)
        ax.plot(d["train_step"], d[DYNAMICS[2]], ls=":", color=color)
    ax.axhline(0, color="black", lw=0.8, ls="-.")
    extra = [Line2D([], [], color="gray", marker="o", label="measured slope (median over seeds)"),
             Line2D([], [], color="gray", ls="--", label="prediction (where one applies)"),
             Line2D([], [], color="gray", ls=":", label="top Lyapunov exponent λ₁ / ln 10")]
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, labels=names + [h.get_label() for h in extra],
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel("training step")
    ax.set_ylabel("log10 ‖dL/dH_t‖ per step back (decades/step)")
    ax.set_title("The gradient's slope through time, during training")
    return fig
