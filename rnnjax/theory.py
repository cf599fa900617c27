"""Theory that predicts how fast ||dL/dH_t|| vanishes or explodes, to set beside measurements.

- Mean field (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington & Schoenholz 2018)
  for W_hh ~ N(0, g^2/H): the pre-activation variance q* and chi_1 = g^2 E[phi'(h)^2]; the
  per-step factor of ||dL/dH_t|| is sqrt(chi_1), the depth scale xi = -1/ln(chi_1).
- Pascanu, Mikolov & Bengio (2013): ||dH_T/dH_t|| <= (gamma sigma_max(W_hh))^(T-t).
- Linear RNNs: the profile is exactly the powers of W_hh^T applied to dL/dH_T.
- Lyapunov exponents of the driven hidden dynamics by the QR method (Engelken, Wolf & Abbott).

Gaussian expectations use Gauss-Hermite quadrature (numpy, float64). The functions that need
the network's trajectory (`lyapunov_exponents`) are pure JAX and vmappable.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.cells import RNNParams, activation, input_drive

# sup |phi'|: the gamma of Pascanu et al.'s bound.
GAMMA = {"tanh": 1.0, "relu": 1.0, "linear": 1.0, "sigmoid": 0.25}


def _np_phi(name: str) -> tuple[Callable, Callable]:
    """phi and phi' in numpy float64 (relu'(0) never arises: the quadrature has no node at 0)."""
    if name == "tanh":
        return np.tanh, lambda h: 1.0 - np.tanh(h) ** 2
    if name == "sigmoid":
        s = lambda h: 0.5 * (1.0 + np.tanh(0.5 * h))  # noqa: E731 (overflow-free sigmoid)
        return s, lambda h: s(h) * (1.0 - s(h))
    if name == "relu":
        return lambda h: np.maximum(h, 0.0), lambda h: (h > 0).astype(np.float64)
    if name == "linear":
        return lambda h: h, np.ones_like
    raise ValueError(f"activation={name!r} is unknown; allowed: {sorted(GAMMA)}")


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(128)  # even: no node at exactly 0
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)  # the weights of E over N(0, 1)


def gauss_expect(f: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """E[f(h)] for h ~ N(0, q), by 128-point Gauss-Hermite quadrature."""
    return float(np.sum(_WEIGHTS * f(math.sqrt(max(q, 0.0)) * _NODES)))


def mean_field_q(name: str, gain: float, input_var: float = 0.0, bias_var: float = 0.0,
                 max_iter: int = 10_000, tol: float = 1e-13) -> float:
    """The fixed point q* of q = g^2 E[phi(h)^2] + input_var + bias_var, h ~ N(0, q).

    E[phi^2] is the raw second moment: with zero-mean weights the mean of phi (sigmoid's 1/2)
    adds to the variance of A_t. Returns inf when the iteration diverges (e.g. linear, g >= 1).
    """
    phi, _ = _np_phi(name)
    q = 1.0 + input_var + bias_var
    for _ in range(max_iter):
        new = gain**2 * gauss_expect(lambda h: phi(h) ** 2, q) + input_var + bias_var
        if not new < 1e30:
            return math.inf
        if abs(new - q) <= tol * max(1.0, q):
            return new
        q = new
    return q


def mean_field_chi(name: str, gain: float, q: float) -> float:
    """chi_1 = g^2 E[phi'(h)^2], h ~ N(0, q): the mean squared per-step gain of a gradient."""
    _, dphi = _np_phi(name)
    if math.isinf(q):
        q = 1e30  # linear and relu do not depend on q; tanh and sigmoid saturate
    return gain**2 * gauss_expect(lambda h: dphi(h) ** 2, max(q, 1e-300))


def mean_field(name: str, gain: float, input_var: float = 0.0, bias_var: float = 0.0) -> dict:
    """The mean-field prediction for W_hh ~ N(0, gain^2/H).

    Returns:
      q_star, chi1, log10_factor_per_step (= log10 sqrt(chi1), the predicted log10 change of
      ||dL/dH_t|| per step back), depth_scale (-1/ln chi1; inf at criticality, negative when
      gradients explode).
    """
    q = mean_field_q(name, gain, input_var, bias_var)
    chi = mean_field_chi(name, gain, q)
    log_chi = math.log(chi) if chi > 0 else -math.inf
    return {
        "q_star": q,
        "chi1": chi,
        "log10_factor_per_step": 0.5 * log_chi / math.log(10),
        "depth_scale": -1.0 / log_chi if log_chi != 0 else math.inf,
    }


def effective_gain(W_hh: np.ndarray) -> float:
    """g with H E[W_ij^2] = g^2: the mean-field gain of any W_hh (exact for `gaussian`, the
    gain itself for `orthogonal`)."""
    W = np.asarray(W_hh, np.float64)
    return float(math.sqrt(W.shape[0] * np.mean(W**2)))


def input_drive_variance(W_xh: np.ndarray, x: np.ndarray) -> float:
    """The mean square of X_t W_xh over the batch, steps and units: the input's share of q."""
    drive = np.asarray(input_drive(jnp.asarray(W_xh), jnp.asarray(x)), np.float64)
    return float(np.mean(drive**2))


def pascanu_log10_bound(name: str, W_hh: np.ndarray) -> float:
    """log10 of gamma * sigma_max(W_hh): the bound's log10 change per step back.

    ||dH_T/dH_t|| <= (gamma sigma_max)^(T-t); vanishing is guaranteed when it is < 0."""
    sigma = np.linalg.norm(np.asarray(W_hh, np.float64), ord=2)
    return float(math.log10(GAMMA[name] * sigma)) if sigma > 0 else -math.inf


def linear_profile(W_hh: np.ndarray, dL_dH_T: np.ndarray, T: int) -> np.ndarray:
    """Exact ||dL/dH_t|| of a LINEAR RNN whose loss is at the last step: ||dL/dH_T (W^T)^(T-t)||.

    Args:
      W_hh: (H, H). dL_dH_T: (B, H). T: steps.

    Returns:
      (T,) norms for t = 1..T, in float64.
    """
    W = np.asarray(W_hh, np.float64)
    g = np.asarray(dL_dH_T, np.float64)
    out = np.empty(T)
    for k in range(T):  # host-side numpy on an (B, H) vector: the reference, not the harness
        out[T - 1 - k] = np.linalg.norm(g)
        g = g @ W.T
    return out


def make_lyapunov(activation_name: str, k: int = 3, burn_in: int = 0):
    """Builds `lyapunov(params, x) -> (k,)`: the top k Lyapunov exponents (natural log per
    step) of the hidden dynamics driven by the batch x, by the QR method, averaged over the batch.

    The Jacobian of one step is J_t = diag(phi'(A_t)) W_hh^T; an orthonormal frame Q is pushed
    through J_t and re-orthonormalized, and the logs of |diag R| are averaged over the steps
    after `burn_in`.
    """
    phi = activation(activation_name)

    def one(params: RNNParams, drive: Array) -> Array:  # drive (T, H): one sequence
        H = params.W_hh.shape[0]
        Q0 = jnp.eye(H, k, dtype=params.W_hh.dtype)

        def step(carry, inp):
            h, Q = carry
            d, t = inp
            a = d + h @ params.W_hh
            dphi = jax.grad(lambda z: phi(z).sum())(a)
            Q, R = jnp.linalg.qr(dphi[:, None] * (params.W_hh.T @ Q))
            logs = jnp.log(jnp.abs(jnp.diagonal(R)))
            return (phi(a), Q), jnp.where(t >= burn_in, logs, 0.0)

        T = drive.shape[0]
        h0 = jnp.zeros((H,), params.W_hh.dtype)
        _, logs = jax.lax.scan(step, (h0, Q0), (drive, jnp.arange(T)))
        return logs.sum(0) / max(T - burn_in, 1)

    def lyapunov(params: RNNParams, x: Array) -> Array:
        drive = input_drive(params.W_xh, x) + params.b_h  # (T, B, H)
        return jax.vmap(one, (None, 1))(params, drive).mean(0)

    return lyapunov


def jacobian_product_singular_values(params: RNNParams, x: np.ndarray, activation_name: str,
                                     t: int) -> np.ndarray:
    """Singular values of dH_T/dH_t for ONE sequence x (T,) or (T, D), brute force in float64.

    Small cases only: it forms the (H, H) product of T - t Jacobians.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    drive = np.asarray(input_drive(jnp.asarray(p["W_xh"]), jnp.asarray(np.asarray(x)[None])),
                       np.float64)[:, 0] + p["b_h"]
    phi, dphi = _np_phi(activation_name)
    h = np.zeros(p["W_hh"].shape[0])
    P = np.eye(len(h))
    for s, d in enumerate(drive, start=1):  # reference loop over time, float64
        a = d + h @ p["W_hh"]
        h = phi(a)
        if s > t:
            P = (dphi(a)[:, None] * p["W_hh"].T) @ P
    return np.linalg.svd(P, compute_uv=False)
