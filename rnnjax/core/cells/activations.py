"""The elementwise nonlinearities phi of the vanilla RNN: each one record, in JAX for the cell
and its probe, in numpy float64 for the mean field (`rnnjax.core.meanfield`), with the constant
of Pascanu et al.'s bound."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.core.meanfield import NUMPY_PHI


class Activation(NamedTuple):
    """One nonlinearity phi."""

    name: str  # the option `activation=name`
    fn: Callable[[Any], Any]  # phi(A) in JAX
    # phi'(A) as a function of H = phi(A), in JAX: the probe's fast backward step keeps H_t
    # only (relu: jax.nn.relu's derivative at 0 is 0, and H = 0 there)
    derivative_from_output: Callable[[Any], Any]
    gamma: float  # sup |phi'|: the gamma of Pascanu et al.'s bound
    phi: Callable[[np.ndarray], np.ndarray]  # phi in numpy float64
    # phi' in numpy float64; the built-ins' numpy twins live in rnnjax.core.meanfield.NUMPY_PHI,
    # which the report uses without JAX
    dphi: Callable[[np.ndarray], np.ndarray]


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("tanh", fn=jnp.tanh,
               derivative_from_output=lambda h: 1 - h * h, gamma=1.0,
               phi=NUMPY_PHI["tanh"][0], dphi=NUMPY_PHI["tanh"][1]),
    Activation("sigmoid", fn=jax.nn.sigmoid,
               derivative_from_output=lambda h: h * (1 - h), gamma=0.25,
               phi=NUMPY_PHI["sigmoid"][0], dphi=NUMPY_PHI["sigmoid"][1]),
    Activation("relu", fn=jax.nn.relu,
               derivative_from_output=lambda h: (h > 0).astype(h.dtype), gamma=1.0,
               phi=NUMPY_PHI["relu"][0], dphi=NUMPY_PHI["relu"][1]),
    # identity: the analytic control
    Activation("linear", fn=lambda a: a,
               derivative_from_output=jnp.ones_like, gamma=1.0,
               phi=NUMPY_PHI["linear"][0], dphi=NUMPY_PHI["linear"][1]),
)}


def get(name: str) -> Activation:
    """The activation `activation=name`; a ValueError naming the allowed ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation={name!r} is unknown; allowed: {sorted(ACTIVATIONS)}"
                         ) from None
