"""Mean-field theory of a vanilla RNN's gradient in numpy and math only (no JAX), so that the
report draws its curves without starting JAX; `rnnjax.core.theory` re-exports these.

Mean field (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington & Schoenholz 2018) for
W_hh ~ N(0, g^2/H): the pre-activation variance q* and chi_1 = g^2 E[phi'(h)^2]; the per-step
factor of ||dL/dH_t|| is sqrt(chi_1), the depth scale xi = -1/ln(chi_1). Gaussian expectations
use Gauss-Hermite quadrature (numpy, float64).
"""

import math
from collections.abc import Callable

import numpy as np


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # overflow-free


# phi and phi' of the built-in activations in numpy float64, here so that the report's mean-field
# curves need no JAX: the records of `rnnjax.core.cells.activations` take theirs from here
# (relu'(0) never arises in the mean field: its quadrature has no node at 0).
NUMPY_PHI: dict[str, tuple[Callable, Callable]] = {
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "sigmoid": (_np_sigmoid, lambda a: _np_sigmoid(a) * (1.0 - _np_sigmoid(a))),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
    "linear": (lambda a: a, np.ones_like),
}


def _np_phi(name: str) -> tuple[Callable, Callable]:
    """phi and phi' of `activation=name` in numpy float64."""
    try:
        return NUMPY_PHI[name]
    except KeyError:
        raise ValueError(f"activation={name!r} is unknown; allowed: {sorted(NUMPY_PHI)}"
                         ) from None


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
