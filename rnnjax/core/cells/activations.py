"""The elementwise nonlinearities phi of the vanilla RNN: each one record, in JAX for the cell
and its probe, in numpy float64 for the mean field (`rnnjax.core.meanfield`), with the constant
of Pascanu et al.'s bound."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Activation(NamedTuple):
    """One nonlinearity phi."""

    name: str  # the option `activation=name`
    fn: Callable[[Any], Any]  # phi(A) in JAX
    # phi'(A) as a function of H = phi(A), in JAX: the probe's fast backward step keeps H_t
    # only (relu: jax.nn.relu's derivative at 0 is 0, and H = 0 there)
    derivative_from_output: Callable[[Any], Any]
    gamma: float  # sup |phi'|: the gamma of Pascanu et al.'s bound
    phi: Callable[[np.ndarray], np.ndarray]  # phi in numpy float64
    # phi' in numpy float64 (relu'(0) never arises in the mean field: its quadrature has no node
    # at 0)
    dphi: Callable[[np.ndarray], np.ndarray]


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # overflow-free


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("tanh", fn=jnp.tanh,
               derivative_from_output=lambda h: 1 - h * h, gamma=1.0,
               phi=np.tanh, dphi=lambda a: 1.0 - np.tanh(a) ** 2),
    Activation("sigmoid", fn=jax.nn.sigmoid,
               derivative_from_output=lambda h: h * (1 - h), gamma=0.25,
               phi=_np_sigmoid, dphi=lambda a: _np_sigmoid(a) * (1.0 - _np_sigmoid(a))),
    Activation("relu", fn=jax.nn.relu,
               derivative_from_output=lambda h: (h > 0).astype(h.dtype), gamma=1.0,
               phi=lambda a: np.maximum(a, 0.0), dphi=lambda a: (a > 0).astype(np.float64)),
    # identity: the analytic control
    Activation("linear", fn=lambda a: a,
               derivative_from_output=jnp.ones_like, gamma=1.0,
               phi=lambda a: a, dphi=np.ones_like),
)}


def get(name: str) -> Activation:
    """The activation `activation=name`; a ValueError naming the allowed ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation={name!r} is unknown; allowed: {sorted(ACTIVATIONS)}"
                         ) from None
