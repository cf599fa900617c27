"""An example rnnjax cell plugin: H_t = phi(scale * (X_t W_xh + H_{t-1} W_hh + b_h)).

Installed, it adds `cell=scaled_tanh` with the option `cell.scale` (its label and theory
included), through the entry point group `rnnjax.cells` (see pyproject.toml). The cell is
rnnjax's vanilla RNN with a linear activation, its pre-activation scaled and then passed
through phi (tanh, or linear for the analytic control).
"""

import math

import jax.numpy as jnp
import numpy as np

from rnnjax.core.cells import CellSpec, Option
from rnnjax.core.cells.vanilla import vanilla

PHI = {"tanh": jnp.tanh, "linear": lambda a: a}


def scaled_tanh(activation: str = "tanh", init: str = "normal", init_value=None,
                scale: float = 1.0):
    """The cell: vanilla's parameters and read-out, its step phi(scale * A_t)."""
    base = vanilla(activation="linear", init=init, init_value=init_value)
    phi = PHI[activation]

    def step(params, h, x_t):
        return phi(scale * base.step(params, h, x_t))  # base.step is A_t (linear)

    return base._replace(name="scaled_tanh", step=step, backward=None)


def theory(cell, params, x, measured, scale: float = 1.0, **_) -> dict:
    """log10(scale * sigma_max(W_hh)) per step back (median over seeds): each step back
    multiplies the gradient by scale * phi'(A_t) * W_hh^T, so this is an upper bound, exact for
    activation=linear with an orthogonal W_hh (every singular value equal)."""
    del cell, x, measured
    W = np.asarray(params.W_hh, np.float64)  # (S, H, H)
    sigma = np.linalg.norm(W, ord=2, axis=(1, 2))  # (S,)
    return {"predicted_log10_slope_per_step_back": float(np.median(np.log10(scale * sigma))),
            "prediction": "log10(scale sigma_max(W_hh)): exact for activation=linear and "
                          "init=orthogonal, else an upper bound"}


def _check_scale(value: float) -> str | None:
    return None if 0 < value < math.inf else "must be a finite number > 0"


SPEC = CellSpec(
    build=scaled_tanh,
    options={"scale": Option(1.0, float, "multiplies the pre-activation", _check_scale)},
    activations=("tanh", "linear"),
    theory=theory,
    label=lambda options: f"scale={options['scale']:g}",
    cost=lambda options, H: 3 * H,  # as vanilla's: H_{t-1}, H_t and phi'
    help="example plugin: H_t = phi(scale * (X_t W_xh + H_{t-1} W_hh + b_h))",
    order=50,
)
