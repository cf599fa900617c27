"""Numpy statistics the cells' theories, the summary and the results share (float64, no JAX):
the headline slope's rule among them."""

import math

import numpy as np


def effective_gain(W: np.ndarray) -> np.ndarray:
    """g with H E[W_ij^2] = g^2 of (..., H, H) matrices: shape (...), float64 (() for one).

    The mean-field gain of any recurrent matrix: g itself for `gaussian` (W ~ N(0, g^2 / H)) and
    for `orthogonal` (gain g)."""
    W = np.asarray(W, np.float64)
    return np.sqrt(W.shape[-1] * np.mean(W**2, axis=(-2, -1)))


def finite_median(values) -> float:
    """The median of the finite entries of `values` (NaN when none is finite)."""
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def relative_error(measured: float, predicted: float) -> float:
    """|measured - predicted| / |predicted| (NaN when undefined)."""
    if not (math.isfinite(measured) and math.isfinite(predicted)) or predicted == 0:
        return math.nan
    return abs(measured - predicted) / abs(predicted)


def fit_window(T: int, first: int = 1) -> tuple[int, int]:
    """The timesteps (1-based, inclusive) a slope is fitted over: the middle half of
    `first`..T, away from the ends (where the local loss term and H_0 = 0 distort the profile);
    all of `first`..T when that middle half has fewer than 2 steps."""
    n = T - first + 1
    lo, hi = first + n // 4, T - n // 4
    return (lo, hi) if hi - lo >= 1 else (first, T)


def usable_from(grad_norm: np.ndarray) -> int:
    """The first t (1-based) from which every grad_norm up to T is finite and > 0.

    Going back in time a vanishing gradient underflows to 0 and stays there; an exploding one
    overflows to inf. Only the steps after the last such step carry a measurable slope.
    """
    bad = ~(np.isfinite(grad_norm) & (np.asarray(grad_norm) > 0))
    return int(np.nonzero(bad)[0].max()) + 2 if bad.any() else 1


def log10_slope(grad_norm: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Least-squares slope of log10 grad_norm per step BACK in time, and the window fitted.

    The window is the middle half of the usable steps (`usable_from`..T). Negative: the
    gradient shrinks going back (vanishing); positive: it grows (exploding). NaN when fewer
    than 2 steps are usable.

    Args:
      grad_norm: (T,) norms for t = 1..T.

    Returns:
      (slope, (lo, hi)) with the window 1-based and inclusive.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return slope_of_log10(np.log10(np.asarray(grad_norm, dtype=np.float64)))


def slope_of_log10(log10_profile: np.ndarray) -> tuple[float, tuple[int, int]]:
    """`log10_slope` of a profile given as log10 norms (an entry that is not finite is a step
    that is not usable, as a norm that is 0 or not finite is)."""
    p = np.asarray(log10_profile, dtype=np.float64)
    bad = ~np.isfinite(p)
    T, first = len(p), int(np.nonzero(bad)[0].max()) + 2 if bad.any() else 1
    window = fit_window(T, first) if first <= T else (first, T)
    t = np.arange(window[0], window[1] + 1)
    if len(t) < 2:
        return math.nan, window
    return float(-np.polyfit(t, p[t - 1], 1)[0]), window
