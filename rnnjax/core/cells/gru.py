"""The gated recurrent unit of d2l 10.2 (Cho et al. 2014), in row-vector form.

    Z_t = sigmoid(X_t W_xz + H_{t-1} W_hz + b_z)                  update gate
    R_t = sigmoid(X_t W_xr + H_{t-1} W_hr + b_r)                  reset gate
    H~_t = tanh(X_t W_xh + (R_t * H_{t-1}) W_hh + b_h)            candidate
    H_t = Z_t * H_{t-1} + (1 - Z_t) * H~_t,      O_t = H_t W_hq + b_q,      H_0 = 0.

The reset gate acts BEFORE the recurrent product, (R_t * H_{t-1}) W_hh, as in d2l's scratch
code; torch.nn.GRU, flax and equinox apply it after, R_t * (H_{t-1} W_hn + b_hn): a different
function of the same parameters.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.gated import gate_theory, initializers, mean_gates
from rnnjax.core.cells.registry import CellSpec
from rnnjax.core.cells.vanilla import step_drive


class GRUParams(NamedTuple):
    """Parameters of one GRU network (a leading seed axis S is added by `vmap`)."""

    W_xz: Array  # (D, H) input to update gate, one row per token
    W_hz: Array  # (H, H)
    b_z: Array  # (H,)
    W_xr: Array  # (D, H) input to reset gate
    W_hr: Array  # (H, H)
    b_r: Array  # (H,)
    W_xh: Array  # (D, H) input to candidate
    W_hh: Array  # (H, H)
    b_h: Array  # (H,)
    W_hq: Array  # (H, Q) hidden to output
    b_q: Array  # (Q,)


RECURRENT = ("W_hz", "W_hr", "W_hh")


def gates(params: GRUParams, h: Array, x_t: Array) -> tuple[Array, Array, Array]:
    """(Z_t, R_t, H~_t), each (B, H), for the state h = H_{t-1} (B, H) and input x_t."""
    p = params
    z = jax.nn.sigmoid(step_drive(p.W_xz, x_t) + h @ p.W_hz + p.b_z)
    r = jax.nn.sigmoid(step_drive(p.W_xr, x_t) + h @ p.W_hr + p.b_r)
    cand = jnp.tanh(step_drive(p.W_xh, x_t) + (r * h) @ p.W_hh + p.b_h)
    return z, r, cand


def initial_state(params: GRUParams, B: int) -> Array:
    """H_0 = 0: (B, H)."""
    return jnp.zeros((B, params.W_hh.shape[0]), params.W_hh.dtype)


def step_with_gate(params: GRUParams, h: Array, x_t: Array) -> tuple[Array, Array]:
    """(H_t, Z_t): one step and its update gate."""
    z, _, cand = gates(params, h, x_t)
    return z * h + (1 - z) * cand, z


def gru(init: str = "normal", init_value=None) -> Cell:
    """d2l's GRU cell (d2l 10.2); the candidate's nonlinearity is tanh, the gates' sigmoid.

    Args:
      init: the initializer of W_hz, W_hr and W_hh (one of `rnnjax.core.init.INITS`). With `normal`
        every weight matrix is N(0, std^2), exactly d2l's scratch GRU; with the others the
        input matrices and W_hq are Glorot normal. Biases start at 0.
      init_value: the initializer's parameter (std, gain or radius; None: its default).

    Returns:
      A Cell whose state is H_t (B, H).
    """
    w_h_init, io_init = initializers(init, init_value)

    def init_fn(key, D, H, Q, dtype=jnp.float32):
        k_xz, k_hz, k_xr, k_hr, k_xh, k_hh, k_hq = jax.random.split(key, 7)
        zeros = jnp.zeros((H,), dtype)
        return GRUParams(
            W_xz=io_init(k_xz, (D, H), dtype), W_hz=w_h_init(k_hz, (H, H), dtype), b_z=zeros,
            W_xr=io_init(k_xr, (D, H), dtype), W_hr=w_h_init(k_hr, (H, H), dtype), b_r=zeros,
            W_xh=io_init(k_xh, (D, H), dtype), W_hh=w_h_init(k_hh, (H, H), dtype), b_h=zeros,
            W_hq=io_init(k_hq, (H, Q), dtype), b_q=jnp.zeros((Q,), dtype))

    def step(params, h, x_t):
        return step_with_gate(params, h, x_t)[0]

    def readout(params, h):
        return h @ params.W_hq + params.b_q

    return Cell(name="gru", init=init_fn, initial_state=initial_state, step=step,
                readout=readout, hidden=lambda h: h, recurrent=RECURRENT)


def theory(cell, params, x, measured, **options) -> dict:
    """The mean update gate Z_t at initialization over the probe batch (see
    `rnnjax.core.cells.gated.gate_theory`)."""
    del measured, options
    return gate_theory("update gate Z", mean_gates(step_with_gate, initial_state),
                       RECURRENT, params, x)


SPEC = CellSpec(
    build=gru,
    activations=("tanh",),
    theory=theory,
    # per step: H_{t-1}, Z_t, R_t, R_t * H_{t-1}, H~_t and the derivatives of the three
    # nonlinearities, what autodiff saves (tests/test_cells.py measures it)
    cost=lambda options, H: 9 * H,
    help="d2l's GRU (the reset gate before the recurrent product); init applies to W_h*",
    order=1,
)
