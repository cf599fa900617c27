"""The vanilla RNN of d2l's RNN chapter, in row-vector form.

    A_t = X_t W_xh + H_{t-1} W_hh + b_h,   H_t = phi(A_t),   O_t = H_t W_hq + b_q,   H_0 = 0.

Token inputs are one-hot rows (X_t W_xh is the row of W_xh picked by the token); real-valued
inputs (B, D), as in the adding problem, are used as they are.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.cells import activations
from rnnjax.core.cells.activations import ACTIVATIONS  # noqa: F401 (re-exported)
from rnnjax.core.cells.registry import CellSpec
from rnnjax.core.init import Initializer, make_init, xavier
from rnnjax.core.meanfield import mean_field
from rnnjax.core.stats import effective_gain, finite_median, relative_error


class RNNParams(NamedTuple):
    """Parameters of one network (a leading seed axis S is added by `vmap`)."""

    W_xh: Array  # (D, H) input-to-hidden, one row per token
    W_hh: Array  # (H, H) hidden-to-hidden
    b_h: Array  # (H,)
    W_hq: Array  # (H, Q) hidden-to-output
    b_q: Array  # (Q,)


def activation(name: str) -> Callable[[Array], Array]:
    """The elementwise nonlinearity `phi` called `name` (one of `ACTIVATIONS`), in JAX."""
    return activations.get(name).fn


def step_drive(W_xh: Array, x_t: Array) -> Array:
    """X_t W_xh for one step: (B, H). x_t is (B,) tokens or (B, D) real inputs."""
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        # A row gather equals the one-hot product; on a CPU it is also ~2x faster end to end.
        return W_xh[x_t]
    return x_t.astype(W_xh.dtype) @ W_xh


def init_params(key: Array, w_hh_init: Initializer, io_init: Initializer, D: int, H: int, Q: int,
                dtype=jnp.float32) -> RNNParams:
    """Initial parameters of one network.

    Args:
      key: a PRNG key.
      w_hh_init: initializer of W_hh.
      io_init: initializer of W_xh and W_hq.
      D: input size (vocabulary or channels). H: hidden size. Q: output size.
      dtype: parameter dtype.

    Returns:
      RNNParams with W_xh (D, H), W_hh (H, H), b_h (H,), W_hq (H, Q), b_q (Q,); biases 0.
    """
    k_xh, k_hh, k_hq = jax.random.split(key, 3)
    return RNNParams(
        W_xh=io_init(k_xh, (D, H), dtype),
        W_hh=w_hh_init(k_hh, (H, H), dtype),
        b_h=jnp.zeros((H,), dtype),
        W_hq=io_init(k_hq, (H, Q), dtype),
        b_q=jnp.zeros((Q,), dtype),
    )


def log10_outer_norm(u: Array, v: Array) -> Array:
    """log10 ||u^T v||_F for u, v (B, H), without forming the (H, H) product when B <= H.

    ||u^T v||_F^2 = <u u^T, v v^T>_F costs B^2 H instead of B H^2. Both factors are scaled by
    their largest entry first (see `rnnjax.core.cells.unit` for why).
    """
    from rnnjax.core.cells.base import unit

    mu, mv = jnp.max(jnp.abs(u)), jnp.max(jnp.abs(v))
    un, vn = unit(u, mu), unit(v, mv)
    B, H = u.shape
    if B > H:  # shapes are static: form the (H, H) product when it is the smaller
        sq = jnp.sum(jnp.square(un.T @ vn))
    else:
        # The inner product of two PSD matrices is >= 0; clip rounding below zero.
        sq = jnp.maximum(jnp.sum((un @ un.T) * (vn @ vn.T)), 0)
    # 0 where a factor is 0 (H_0 = 0 at step 1): there XLA on a CPU read the Gram of the zero
    # constant from memory it never wrote, NaN in most runs with 28 vmapped networks of H = 512.
    sq = jnp.where((mu > 0) & (mv > 0), sq, 0)
    return jnp.log10(mu) + jnp.log10(mv) + 0.5 * jnp.log10(sq)


def vanilla(activation: str = "tanh", init: str = "normal", init_value=None) -> "Cell":  # noqa: F821
    """The vanilla RNN cell.

    Args:
      activation: the name of phi (one of `ACTIVATIONS`).
      init: the initializer of W_hh (one of `rnnjax.core.init.INITS`). With `normal` every weight
        matrix is N(0, std^2), exactly d2l's scratch RNN; with the others W_xh and W_hq are
        Glorot normal. Biases start at 0.
      init_value: the initializer's parameter (std, gain or radius; None: its default). It may
        be a traced value, so that several values are vmapped in one call.

    Returns:
      A Cell whose state is H_t (B, H), with a fast backward step for the probe.
    """
    from rnnjax.core.cells.base import Cell

    act = activations.get(activation)
    phi, dphi = act.fn, act.derivative_from_output
    w_hh_init = make_init(init, init_value)
    io_init = make_init("normal", init_value) if init == "normal" else xavier()

    def init_fn(key, D, H, Q, dtype=jnp.float32):
        return init_params(key, w_hh_init, io_init, D, H, Q, dtype)

    def initial_state(params, B):
        return jnp.zeros((B, params.W_hh.shape[0]), params.W_hh.dtype)

    def step(params, h, x_t):
        return phi(step_drive(params.W_xh, x_t) + params.b_h + h @ params.W_hh)

    def readout(params, h):
        return h @ params.W_hq + params.b_q

    def backward(params, h_prev, h, x_t, g):
        # dL/dA_t = dL/dH_t * phi'(A_t), with phi' read off H_t: no recomputation of A_t, and
        # the W_hh share's norm by the Gram trick: no (H, H) matrix per step.
        del x_t
        dA = g * dphi(h)
        return dA @ params.W_hh.T, log10_outer_norm(h_prev, dA), {}

    return Cell(name="vanilla", init=init_fn, initial_state=initial_state, step=step,
                readout=readout, hidden=lambda h: h, recurrent=("W_hh",), backward=backward)


# ----------------------------------------------------------------------------- theory


def input_drive_variance(W_xh: np.ndarray, x: np.ndarray) -> float:
    """The mean square of X_t W_xh over the batch, steps and units: the input's share of q.

    In float64 numpy, without forming X_t W_xh: a token's drive is its row of W_xh (the mean
    of the rows' squared norms, over the batch's tokens, / H); a real input's squared drive is
    x_t (W_xh W_xh^T) x_t."""
    W = np.asarray(W_xh, np.float64)
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return float(np.mean((W**2).sum(axis=1)[x]) / W.shape[1])
    x = x.astype(np.float64)
    return float(np.mean(np.einsum("...d,de,...e->...", x, W @ W.T, x)) / W.shape[1])


def pascanu_log10_bound(name: str, W_hh: np.ndarray) -> float:
    """log10 of gamma * sigma_max(W_hh): the bound's log10 change per step back.

    ||dH_T/dH_t|| <= (gamma sigma_max)^(T-t); vanishing is guaranteed when it is < 0."""
    sigma = np.linalg.norm(np.asarray(W_hh, np.float64), ord=2)
    return float(math.log10(activations.get(name).gamma * sigma)) if sigma > 0 else -math.inf


def theory(cell, params: RNNParams, x: Array, measured: float, *, activation: str = "tanh"
           ) -> dict:
    """The vanilla RNN's theory beside the measured slope (log10 per step back).

    mean_field: for W_hh ~ N(0, g^2/H) with g the effective gain sqrt(H mean W_hh^2) and the
    input variance of this job's W_xh and batch (medians over seeds), and the bias variance
    (`rnnjax.core.meanfield`); pascanu: log10 of gamma sigma_max(W_hh) (median over seeds), and
    whether it guarantees vanishing for every seed.

    Args:
      cell: the job's cell (unused). params: RNNParams of S networks (leading axis S).
      x: (S, B, T...) their probe batches. measured: the measured median slope.
      activation: the cell's phi.
    """
    del cell
    W_hh = np.asarray(params.W_hh, np.float64)
    W_xh = np.asarray(params.W_xh, np.float64)
    gain = float(np.median(effective_gain(W_hh)))
    input_var = float(np.median([input_drive_variance(W_xh[s], np.asarray(x[s]))
                                 for s in range(x.shape[0])]))
    bias_var = float(np.mean(np.asarray(params.b_h, np.float64) ** 2))
    mf = mean_field(activation, gain, input_var, bias_var)
    bounds = [pascanu_log10_bound(activation, w) for w in W_hh]
    return {
        "mean_field": {"gain": gain, "input_var": input_var, "bias_var": bias_var, **mf,
                       "relative_error": relative_error(measured, mf["log10_factor_per_step"])},
        "pascanu_log10_bound_per_step": finite_median(bounds),
        "pascanu_guarantees_vanishing": bool(max(bounds) < 0),
    }


SPEC = CellSpec(
    build=vanilla,
    theory=theory,
    # per step: H_{t-1}, H_t and phi'(A_t), what autodiff saves (tests/test_cells.py measures it)
    cost=lambda options, H: 3 * H,
    help="d2l's vanilla RNN, H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h): activation and init apply",
    order=0,
)
