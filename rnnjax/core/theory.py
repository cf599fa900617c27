"""Theory that predicts how fast ||dL/dH_t|| vanishes or explodes, to set beside measurements.

- Mean field (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington & Schoenholz 2018)
  for W_hh ~ N(0, g^2/H): the pre-activation variance q* and chi_1 = g^2 E[phi'(h)^2]; the
  per-step factor of ||dL/dH_t|| is sqrt(chi_1), the depth scale xi = -1/ln(chi_1).
- Pascanu, Mikolov & Bengio (2013): ||dH_T/dH_t|| <= (gamma sigma_max(W_hh))^(T-t).
- Lyapunov exponents of the driven hidden dynamics by the QR method (Engelken, Wolf & Abbott).

Gaussian expectations use Gauss-Hermite quadrature (numpy, float64). The functions that need
the network's trajectory (`make_lyapunov`) are pure JAX and vmappable, for any cell.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree

from rnnjax.core.cells import Cell
from rnnjax.core.cells.vanilla import input_drive

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


def make_lyapunov(cell: Cell, k: int = 3, burn_in: int = 0) -> Callable[..., Array]:
    """Builds `lyapunov(params, x) -> (k,)`: the top k Lyapunov exponents (natural log per
    step) of the cell's state dynamics driven by the batch x, by the QR method, averaged over the
    sequences of the batch.

    The Jacobian of one step, J_t = d s_t / d s_{t-1}, is applied to an orthonormal frame Q by
    `jax.linearize` (a complex state is taken as its real and imaginary parts); Q is
    re-orthonormalized, and the logs of |diag R| are averaged over the steps after `burn_in`.
    For the vanilla RNN, J_t = diag(phi'(A_t)) W_hh^T.

    Args:
      cell: the cell.
      k: how many exponents (at most the state's real dimension).
      burn_in: steps left out of the average at the start.
    """

    def one(params, x: Array) -> Array:  # x (T,) or (T, D): one sequence
        s0 = cell.initial_state(params, 1)
        flat0, unravel = ravel_pytree(s0)
        n, is_complex = flat0.size, jnp.iscomplexobj(flat0)

        def to_vec(s):
            v = ravel_pytree(s)[0]
            return jnp.concatenate([v.real, v.imag]) if is_complex else v

        def from_vec(v):
            return unravel(v[:n] + 1j * v[n:] if is_complex else v)

        Q0 = jnp.eye(to_vec(s0).size, k, dtype=flat0.real.dtype)

        def step(carry, inputs):
            s, Q = carry
            x_t, t = inputs
            s_next, jvp = jax.linearize(lambda z: cell.step(params, z, x_t[None]), s)
            JQ = jax.vmap(lambda q: to_vec(jvp(from_vec(q))), in_axes=1, out_axes=1)(Q)
            Q, R = jnp.linalg.qr(JQ)
            logs = jnp.log(jnp.abs(jnp.diagonal(R)))
            return (s_next, Q), jnp.where(t >= burn_in, logs, 0.0)

        T = x.shape[0]
        _, logs = jax.lax.scan(step, (s0, Q0), (x, jnp.arange(T)))
        return logs.sum(0) / max(T - burn_in, 1)

    def lyapunov(params, x: Array) -> Array:
        return jax.vmap(one, (None, 0))(params, x).mean(0)

    return lyapunov
