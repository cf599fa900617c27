"""Figures and a markdown report of a run or sweep: `rnnjax report PATH [--out DIR]`.

Writes heatmap.png, decay_curves.png, phase_diagram.png (when the jobs whose prediction applies
have at least 2 distinct gains), slope_vs_lyapunov.png (when a job has its loss at the last
step), training.png (when a job trained) and report.md into DIR (default: PATH).
"""

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; before seaborn imports pyplot

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rnnjax import frames, plots  # noqa: E402
from rnnjax.results import load_metrics, load_summaries, load_sweep  # noqa: E402

DPI = 120
GAIN_TOLERANCE = 0.05  # effective gains within 5% of each other count as one


def make_parser() -> argparse.ArgumentParser:
    """The command line; its `prog` is the name it was called by (`rnnjax report`,
    `report.py`), which the messages begin with."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Figures are drawn by rnnjax.plots from the tables of rnnjax.frames; numbers in "
               "the table have 4 significant digits.")
    parser.add_argument("path", type=Path, help="a run directory or a multirun directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the PNGs and report.md (default: PATH)")
    return parser


def n_gains(summaries: pd.DataFrame) -> int:
    """The number of distinct effective gains of the vanilla RNN's jobs (within
    GAIN_TOLERANCE: one)."""
    if frames.MF + "gain" not in summaries:
        return 0
    g = np.sort(summaries[frames.MF + "gain"].astype(float).to_numpy())
    g = g[np.isfinite(g) & (g > 0)]
    return int(g.size and 1 + np.sum(np.diff(np.log(g)) > np.log1p(GAIN_TOLERANCE)))


def decay_hue(df: pd.DataFrame) -> str:
    """The first of the usual sweep axes that varies: the colour of the decay curves."""
    cfg = frames.config_frame(df.drop_duplicates("job"))
    for col in ("T", "init_gain", "init_std", "init_radius", "init", "cell", "hidden_size",
                "loss_at", "task"):
        if col in cfg and cfg[col].nunique(dropna=False) > 1:
            return col
    return "T"


def data_line(df: pd.DataFrame, summaries: pd.DataFrame) -> str:
    """What was loaded, and how many grad_norm points no log-scale figure can show."""
    g = df["grad_norm"].to_numpy()
    seeds = sorted(df.groupby("job")["seed"].nunique().unique())
    under, other = int((g == 0).sum()), int((~np.isfinite(g)).sum())
    head = (f"{len(summaries)} finished job(s), {'/'.join(map(str, seeds))} seed(s) per job, "
            f"{len(g)} grad_norm values (every seed, t and logged training step): ")
    if not under and not other:
        return head + "every one finite and above 0, so the log-scale figures show them all."
    return (head + f"{under} underflowed to 0 and {other} are inf/NaN; log scales cannot show "
            "them, so the figures leave them out (medians over seeds still count them) and "
            "say how many medians they left out.")


def figures(df: pd.DataFrame, summaries: pd.DataFrame, metrics: pd.DataFrame | None
            ) -> list[tuple[str, str, str, Callable[[], Figure]]]:
    """(file, heading, caption, make) of each figure this sweep has."""
    hue = decay_hue(df)
    pred = frames.predictions(summaries)
    theory = (" Dashed: the prediction where one applies, anchored at T − t = T/4."
              if pred["applies"].any() else
              " No prediction is drawn: none applies (with the loss over all steps every "
              "step's own loss term keeps the profile flat; `probe.loss_at=last` measures one "
              "term's decay).")
    out = [
        ("heatmap.png", "Gradient norm by timestep and configuration",
         "log10 ‖dL/dH_t‖ at initialization, median over seeds, for every timestep t (x) and "
         "configuration (y); black cells: the median underflowed to 0.",
         lambda: plots.heatmap(df)),
        ("decay_curves.png", "Decay going back in time",
         "log10 ‖dL/dH_t‖ against steps back from the end, T − t, one panel per activation "
         f"or cell, colour: {frames.NAMES.get(hue, hue)}; line: median over seeds, band: "
         "interquartile range." + theory,
         lambda: plots.decay_curves(df, summaries, hue=hue)),
    ]
    if n_gains(summaries[pred.reindex(summaries["job"])["applies"].to_numpy()]) >= 2:
        out.append((
            "phase_diagram.png", "Phase diagram: per-step factor against gain",
            "Measured factor of ‖dL/dH_t‖ per step back, 10^slope, against the effective gain "
            "g; lines: the mean-field factor √χ₁(g), dotted: the critical gain (χ₁ = 1). Below "
            "1 the gradient vanishes, above 1 it explodes.",
            lambda: plots.phase_diagram(summaries)))
    if (frames.config_frame(summaries).get("loss_at") == "last").any():
        out.append((
            "slope_vs_lyapunov.png", "Measured slope against the top Lyapunov exponent",
            "Measured slope of log10 ‖dL/dH_t‖ per step back against the top Lyapunov exponent "
            "of the input-driven hidden dynamics (both in decades per step), for the jobs with "
            "the loss at the last step; on the dashed line y = x they agree.",
            lambda: plots.slope_vs_lyapunov(summaries)))
    if metrics is not None:
        first = frames.job_order(metrics["job"])[0]
        out.append((
            "training.png", "Training",
            "Left: validation (solid) and training (dashed) perplexity, or loss where the task "
            "has none, against the training step, median over seeds (dotted: the memoryless "
            "baseline of the adding and copy tasks); right: the gradient profile of job "
            f"{first} at every logged training step.",
            lambda: plots.training_curves(metrics, df, summaries=summaries)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, prog = parser.parse_args(argv), parser.prog
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = load_sweep(args.path)
            summaries = load_summaries(args.path)
            metrics = load_metrics(args.path)
        except FileNotFoundError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"{prog}: warning: {message}", file=sys.stderr)

    out = args.path if args.out is None else args.out
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for file, heading, caption, make in figures(df, summaries, metrics):
        # a pyplot-free Figure: nothing to close
        make().savefig(out / file, dpi=DPI, bbox_inches="tight")
        print(f"{prog}: wrote {out / file}")
        sections.append(f"## {heading}\n\n![{heading}]({file})\n\n{caption}\n")
    text = "\n".join([
        "# Gradient dynamics report\n",
        f"`{args.path.resolve()}`: {data_line(df, summaries)}\n",
        *sections,
        "## Slopes per job\n",
        "Slopes are the log10 change of ‖dL/dH_t‖ per step back in time (negative: "
        "vanishing), the measured one fitted over the middle half of the usable steps, median "
        "over seeds; the prediction is shown where one applies (the loss at the last step); "
        "relative error: |measured − predicted| / |predicted|.\n",
        frames.markdown_table(frames.slope_table(summaries)),
        "",
    ])
    (out / "report.md").write_text(text)
    print(f"{prog}: wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
