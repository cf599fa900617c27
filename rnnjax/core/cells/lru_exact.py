"""Closed forms of the LRU's diagonal linear recurrence at initialization, in numpy float64:
the exact gradient profile and the expected sensitivity of the state to lambda (the theory of
`rnnjax.core.cells.lru`)."""

import math

import numpy as np


def exact_log10_profile(log_r: np.ndarray, weights: np.ndarray, T: int) -> np.ndarray:
    """log10 ||dL/dh_t|| for t = 1..T with the loss at the last step, exactly:
    ||dL/dh_t||^2 = sum_k w_k |lambda_k|^(2 (T - t)), since dL/dh_t = dL/dh_T lambda^(T - t)
    elementwise (a diagonal linear recurrence).

    Args:
      log_r: (H,) natural log of |lambda_k| (float64). weights: (H,) w_k = sum_b |dL/dh_T,k|^2.
      T: the number of steps.

    Returns:
      (T,) float64 (-inf where every weight is 0).
    """
    back = np.arange(T - 1, -1, -1, dtype=np.float64)  # T - t for t = 1..T
    with np.errstate(divide="ignore"):
        logs = np.log(np.asarray(weights, np.float64))[None, :] + 2 * back[:, None] * log_r
    top = np.max(logs, axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    total = safe[:, 0] + np.log(np.sum(np.exp(logs - safe), axis=1))
    return 0.5 * total / math.log(10)


def expected_sensitivity(params, T: int, normalize: bool) -> float:
    """The root mean square of |dh_T/dlambda| over units, expected for i.i.d. uniform tokens.

    dh_T/dlambda = sum_{j=1}^{T-1} j lambda^(j-1) gamma u_{T-j} with u_t = x_t B, so for i.i.d.
    drives of mean m_k and variance sigma_k^2 (over the D rows of B, equally likely),
    E|dh_T,k/dlambda_k|^2 = gamma_k^2 (sigma_k^2 sum_j j^2 |lambda_k|^(2(j-1))
    + |m_k sum_j j lambda_k^(j-1)|^2). For zero-mean drives and T -> infinity this is
    gamma^2 sigma^2 (1 + r^2) / (1 - r^2)^3 (Zucchet & Orvieto 2024): it grows like
    (1 - r)^-3 without normalization and like (1 - r)^-2 with gamma^2 = 1 - r^2.

    Args:
      params: one network's LRUParams. T: the number of steps. normalize: the cell's option.
    """
    q = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    lam = np.exp(-np.exp(q["nu_log"]) + 1j * np.exp(q["theta_log"]))  # (H,)
    gamma2 = np.exp(2 * q["gamma_log"]) if normalize else np.ones(lam.shape)
    rows = q["B_re"] + 1j * q["B_im"]  # (D, H)
    m = rows.mean(axis=0)
    var = np.mean(np.abs(rows - m) ** 2, axis=0)
    second = np.zeros(lam.shape)
    total = np.zeros(lam.shape, complex)
    for start in range(1, T, 4096):  # blocks of j keep memory O(4096 H) for any T
        j = np.arange(start, min(start + 4096, T), dtype=np.float64)[:, None]
        powers = lam[None, :] ** (j - 1)
        second += np.sum(j**2 * np.abs(powers) ** 2, axis=0)
        total += np.sum(j * powers, axis=0)
    first = np.abs(m * total) ** 2
    return float(np.sqrt(np.mean(gamma2 * (var * second + first))))
