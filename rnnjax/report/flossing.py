"""Gradient flossing in the report (fig13_gradient_flossing): success against the delay with and
without flossing (`train.floss`), and at the longest delay the Lyapunov spectrum and the
gradient profile before and after training. Reads files only."""

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from rnnjax.report.style import figure_style

ON, OFF = "flossed", "not flossed"
YLABEL = "Lyapunov exponent λᵢ / ln 10 (decades/step)"


def _setting(frame: pd.DataFrame) -> pd.Series:
    """"flossed (k = K)" where train.floss.k > 0, else "not flossed"."""
    k = pd.to_numeric(frame["train_floss_k"], errors="coerce").fillna(0)
    return pd.Series(np.where(k > 0, ON, OFF), index=frame.index)


@figure_style
def gradient_flossing(metrics: pd.DataFrame, df: pd.DataFrame, lyapunov: pd.DataFrame
                      ) -> Figure:
    """Left: the validation accuracy at the end of training against the delay (`seq_len`),
    each seed a point, the median a line, flossed and not. Middle: the spectrum (median over
    seeds) at initialization and after training, at the longest delay. Right: the gradient
    profile log10 ‖dL/dH_t‖ (relative to t = T, median over seeds) at initialization and after
    training, at the longest delay.

    Args:
      metrics, df, lyapunov: the `load_metrics`, `load_sweep` and `load_lyapunov` frames.
    """
    palette = {OFF: "#888888", ON: "#0072B2"}
    fig = Figure(figsize=(18, 5.5), layout="constrained")
    acc_ax, spec_ax, prof_ax = fig.subplots(1, 3)

    end = metrics[metrics["train_step"] == metrics["train_step"].max()].assign(
        setting=lambda d: _setting(d), delay=lambda d: d["seq_len"])
    sns.stripplot(data=end, x="delay", y="val_accuracy", hue="setting", palette=palette,
                  dodge=True, alpha=0.6, ax=acc_ax, legend=False)
    sns.pointplot(data=end, x="delay", y="val_accuracy", hue="setting", palette=palette,
                  estimator="median", errorbar=None, dodge=0.4, ax=acc_ax)
    acc_ax.axhline(0.25, color="black", lw=0.8, ls="-.", label="chance (1 of 4 symbols)")
    acc_ax.set_ylim(0, 1.05)
    acc_ax.set_xlabel("delay: blank steps between the symbol and its recall (seq_len)")
    acc_ax.set_ylabel("validation accuracy after training")
    acc_ax.set_title("Recall against the delay")
    acc_ax.legend(frameon=False, loc="lower left")

    longest = int(end["delay"].max())
    lyap = lyapunov[lyapunov["seq_len"] == longest].assign(setting=lambda d: _setting(d))
    last = lyap["train_step"].max()
    for (setting, step), g in lyap[lyap["train_step"].isin([0, last])].groupby(
            ["setting", "train_step"]):
        if step == 0 and setting == ON:  # the same networks at initialization
            continue
        med = g.groupby("i")["lyapunov_log10_per_step"].median()
        label = "at initialization" if step == 0 else f"after training, {setting}"
        spec_ax.plot(med.index, med.to_numpy(), marker=".", label=label,
                     color="black" if step == 0 else palette[setting],
                     ls=":" if step == 0 else "-")
    spec_ax.axhline(0, color="black", lw=0.8, ls="-.")
    spec_ax.set_xlabel("exponent i")
    spec_ax.set_ylabel(YLABEL)
    spec_ax.set_title(f"Lyapunov spectrum, delay {longest}")
    spec_ax.legend(frameon=False)

    prof = df[df["seq_len"] == longest].assign(setting=lambda d: _setting(d))
    last = prof["train_step"].max()
    for (setting, step), g in prof[prof["train_step"].isin([0, last])].groupby(
            ["setting", "train_step"]):
        if step == 0 and setting == ON:
            continue
        med = np.log10(g.groupby("t")["grad_norm"].median())
        rel = med - med.iloc[-1]
        label = "at initialization" if step == 0 else f"after training, {setting}"
        prof_ax.plot(rel.index.max() - rel.index, rel.to_numpy(), label=label,
                     color="black" if step == 0 else palette[setting],
                     ls=":" if step == 0 else "-")
    prof_ax.axhline(0, color="black", lw=0.8, ls="-.")
    prof_ax.set_xlabel("steps back from the last step (T − t)")
    prof_ax.set_ylabel("log10 ‖dL/dH_t‖ − log10 ‖dL/dH_T‖")
    prof_ax.set_title(f"Gradient profile, delay {longest} (loss over all steps)")
    prof_ax.legend(frameon=False)
    return fig


__all__ = ["gradient_flossing"]
