"""The dynamics behind the gradient, at initialization and while training: the headline slope,
its theory and the Lyapunov spectrum at every logged training step and at the end
(lyapunov.parquet, metrics.parquet's columns, summary.json's `headline_trained`).

The probe's profile arrives on the host (`rnnjax.app.summary.Profile`); the spectrum is the
job's one compiled `Lyapunov`; the cell's own theory is called as at initialization.
"""

import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from rnnjax.app import results
from rnnjax.app.loaders import LYAPUNOV
from rnnjax.app.summary import Lyapunov, Profile, headline, lyapunov_numbers, theory_summary

LYAPUNOV_FILE = LYAPUNOV  # lyapunov.parquet


class StepNumbers(NamedTuple):
    """The numbers of one logged step: the headline (as summary.json's, with its `theory`) and
    the exponents (S, k), natural log per step."""

    headline: dict
    lam: np.ndarray


def prediction(theory: dict, init: str | None = None) -> float | None:
    """The theory's predicted slope (log10 per step back) where it applies: mean field's factor
    for a random W_hh (not init=identity, as the report has it), else the cell's own
    prediction; None where there is none."""
    if not theory.get("applies", True):
        return None
    if "mean_field" in theory and init != "identity":
        return theory["mean_field"]["log10_factor_per_step"]
    return theory.get("predicted_log10_slope_per_step_back")


class StepTheory:
    """Computes `StepNumbers` for the networks' parameters at any step: the headline of their
    profile, the spectrum, and the cell's theory (`theory_summary`, with the job's context)."""

    def __init__(self, cell, x, lyapunov: Lyapunov, cell_theory=None,
                 options: dict | None = None, **context: Any) -> None:
        self.cell, self.x, self.lyapunov = cell, x, lyapunov
        self.cell_theory, self.options, self.context = cell_theory, options, context

    def __call__(self, params, profile: Profile) -> StepNumbers:
        h = headline(profile)
        lam = self.lyapunov.measure(params, self.x)
        h["theory"] = theory_summary(self.cell, params, self.x, h["log10_slope_per_step_back"],
                                     self.cell_theory, self.options, self.lyapunov, lam=lam,
                                     **self.context)
        return StepNumbers(h, lam)


def lyapunov_frame(seeds: np.ndarray, theory: dict, columns: dict, train_step=0
                   ) -> pd.DataFrame:
    """One row per (seed, exponent i = 1..k) of a theory's spectra (`lyapunov_exponents_per_seed`,
    natural log per step): `lyapunov_per_step` and `lyapunov_log10_per_step`, with the step
    (`train_step`: one for all, or one per network) and the job's config columns."""
    lam = np.asarray(theory["lyapunov_exponents_per_seed"], np.float64)
    n, k = lam.shape
    df = pd.DataFrame({
        "seed": np.repeat(np.asarray(seeds, np.int64), k),
        "train_step": np.repeat(np.broadcast_to(np.asarray(train_step, np.int64), n), k),
        "i": np.tile(np.arange(1, k + 1), n),
        "lyapunov_per_step": lam.reshape(-1),
        "lyapunov_log10_per_step": lam.reshape(-1) / math.log(10),
    })
    return results.with_config_columns(df, columns)


def logged_spectra(seeds: np.ndarray, logged: list[tuple[int, StepNumbers]], columns: dict
                   ) -> pd.DataFrame:
    """`lyapunov_frame` of every logged training step, in order."""
    return pd.concat([lyapunov_frame(seeds, n.headline["theory"], columns, step)
                      for step, n in logged], ignore_index=True)


def metrics_columns(metrics: pd.DataFrame, seeds: np.ndarray,
                    logged: list[tuple[int, StepNumbers]], init: str | None = None
                    ) -> pd.DataFrame:
    """metrics.parquet with the dynamics of each logged step per seed: its measured slope
    (`log10_slope_per_step_back`), the theory's prediction beside it
    (`predicted_log10_slope_per_step_back`, the group's; NaN where none applies) and the top
    exponent (`lyapunov_top_log10_per_step`). init: the job's init (`prediction`)."""
    rows = []
    for step, nums in logged:
        pred = prediction(nums.headline["theory"], init)
        for s, seed in enumerate(seeds):
            rows.append({"train_step": step, "seed": int(seed),
                         "log10_slope_per_step_back": nums.headline["log10_slope_per_seed"][s],
                         "predicted_log10_slope_per_step_back": math.nan if pred is None
                         else pred,
                         "lyapunov_top_log10_per_step": nums.lam[s, 0] / math.log(10)})
    extra = pd.DataFrame(rows, columns=["train_step", "seed", "log10_slope_per_step_back",
                                        "predicted_log10_slope_per_step_back",
                                        "lyapunov_top_log10_per_step"])
    return metrics.merge(extra, on=["train_step", "seed"], how="left")


def trained_line(init: dict, trained: dict, init_name: str | None = None) -> str:
    """The log's line of the dynamics before and after training: the slope, its prediction and
    the top exponent, at initialization -> at the end."""
    def num(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{v:+.4f}"

    p0, p1 = prediction(init["theory"], init_name), prediction(trained["theory"], init_name)
    pred = f", predicted {num(p0)} -> {num(p1)}" if p0 is not None or p1 is not None else ""
    return (f"log10 grad_norm per step back {num(init['log10_slope_per_step_back'])} at "
            f"initialization -> {num(trained['log10_slope_per_step_back'])} after training"
            f"{pred}; top Lyapunov {num(init['theory']['lyapunov_top_log10_per_step'])} -> "
            f"{num(trained['theory']['lyapunov_top_log10_per_step'])} (log10 per step)")


__all__ = ["LYAPUNOV_FILE", "Lyapunov", "StepNumbers", "StepTheory", "logged_spectra",
           "lyapunov_frame", "lyapunov_numbers", "metrics_columns", "prediction", "trained_line"]
