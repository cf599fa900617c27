"""minLSTM of Feng et al. (2024), "Were RNNs All We Needed?", in row-vector form:

    f_t = sigmoid(x_t W_xf + b_f),  i_t = sigmoid(x_t W_xi + b_i)     gates (of the input only)
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)                 normalized: f' + i' = 1
    h~_t = x_t W_xh + b_h                                               candidate
    h_t = f'_t * h_{t-1} + i'_t * h~_t,    o_t = h_t W_hq + b_q,    h_0 = 0.

As for the minGRU (`rnnjax.core.cells.mingru`), no gate reads h_{t-1}: dh_t/dh_{t-1} =
diag(f'_t), and with the loss at the last step dL/dh_t = dL/dh_T * prod_{s=t+1..T} f'_s exactly
(`theory`).

`cell.log_space=true` is the paper's log-space variant (its Appendix code): with
d_t = softplus(-k_f) - softplus(-k_i) = log(i_t / f_t), log f'_t = -softplus(d_t),
log i'_t = -softplus(-d_t), the candidate through g (positive), h_0 = g(0) = 1/2, and

    log h_t = logaddexp(log f'_t + log h_{t-1}, log i'_t + log g(h~_t)),

computed from `linear` by `linear_step` (the state is h_t; see the minGRU's module). It is the
direct form with g applied.

Initialization: nn.Linear's default for every layer (as the minGRU). `activation` and `init`
do not apply. The parameters of the recurrence (`param_grad_norm`) are both gates' (W_xf, b_f,
W_xi, b_i): together they set the coefficient f'_t.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells.base import Cell, linear_step
from rnnjax.core.cells.mingru import (
    affine,
    label,
    linear_init,
    log_g,
    log_space_option,
    make_profile_terms,
    make_theory,
    readout,
    zero_or_half,
)
from rnnjax.core.cells.registry import CellSpec


class MinLSTMParams(NamedTuple):
    """Parameters of one minLSTM network (a leading seed axis S is added by `vmap`)."""

    W_xf: Array  # (D, H) input to forget gate, one row per token
    b_f: Array  # (H,)
    W_xi: Array  # (D, H) input to input gate
    b_i: Array  # (H,)
    W_xh: Array  # (D, H) input to candidate
    b_h: Array  # (H,)
    W_hq: Array  # (H, Q) hidden to output
    b_q: Array  # (Q,)


RECURRENT = ("W_xf", "b_f", "W_xi", "b_i")


def init_params(key: Array, D: int, H: int, Q: int, dtype=jnp.float32) -> MinLSTMParams:
    """nn.Linear's default for each layer: U[-1/sqrt(fan_in), +], fan_in D (H for W_hq, b_q)."""
    k = jax.random.split(key, 8)
    return MinLSTMParams(
        W_xf=linear_init(k[0], D, (D, H), dtype), b_f=linear_init(k[1], D, (H,), dtype),
        W_xi=linear_init(k[2], D, (D, H), dtype), b_i=linear_init(k[3], D, (H,), dtype),
        W_xh=linear_init(k[4], D, (D, H), dtype), b_h=linear_init(k[5], D, (H,), dtype),
        W_hq=linear_init(k[6], H, (H, Q), dtype), b_q=linear_init(k[7], H, (Q,), dtype))


def log_ratio(params: MinLSTMParams, x_t: Array) -> Array:
    """d_t = log(i_t / f_t) = softplus(-k_f) - softplus(-k_i): (B, H)."""
    return (jax.nn.softplus(-affine(params.W_xf, params.b_f, x_t))
            - jax.nn.softplus(-affine(params.W_xi, params.b_i, x_t)))


def log_keep(params: MinLSTMParams, x_t: Array) -> Array:
    """log f'_t = -softplus(d_t): (B, H)."""
    return -jax.nn.softplus(log_ratio(params, x_t))


def minlstm(log_space: bool = False) -> Cell:
    """The minLSTM cell (Feng et al. 2024), direct or in log space.

    Args:
      log_space: the paper's log-space form (see the module's docstring); False: the direct
        form h_t = f'_t h_{t-1} + i'_t h~_t with h_0 = 0.

    Returns:
      A Cell whose state is h_t (B, H); `recurrent` is both gates' (W_xf, b_f, W_xi, b_i).
    """
    def step(params, h, x_t):
        # The direct form's own step, not linear_step's f' h + i' h~: one division instead of
        # two, so autodiff keeps 9H floats per step instead of 12H (`cost`).
        f = jax.nn.sigmoid(affine(params.W_xf, params.b_f, x_t))
        i = jax.nn.sigmoid(affine(params.W_xi, params.b_i, x_t))
        return (f * h + i * affine(params.W_xh, params.b_h, x_t)) / (f + i)

    def linear(params, x_t):  # (f'_t, i'_t h~_t), or their logs (the log-space form)
        a_h = affine(params.W_xh, params.b_h, x_t)
        d = log_ratio(params, x_t)
        if log_space:
            return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(a_h)
        f = jax.nn.sigmoid(affine(params.W_xf, params.b_f, x_t))
        i = jax.nn.sigmoid(affine(params.W_xi, params.b_i, x_t))
        return f / (f + i), i * a_h / (f + i)

    return Cell(name="minlstm", init=init_params,
                initial_state=functools.partial(zero_or_half, log_space=log_space),
                step=linear_step(linear, True) if log_space else step, readout=readout,
                hidden=lambda h: h,
                recurrent=RECURRENT, linear=linear, linear_log=log_space)


@functools.cache
def seed_terms(log_space: bool, kind: str | None = None, loss_at: str | None = None):
    """The profile terms of the minLSTM (`rnnjax.core.cells.mingru.make_profile_terms`)
    vmapped over seeds and jitted, once per setting."""
    return jax.jit(jax.vmap(make_profile_terms(minlstm(log_space), log_keep, kind, loss_at)))


# dL/dh_t = dL/dh_T * prod_{s>t} f'_s, from the normalized forget gates of the probe's batch
theory = make_theory(seed_terms, "minLSTM", "f' = f / (f + i) (normalized forget gate)")


def cost(options: dict, H: int) -> int:
    """Floats per step and per sequence autodiff keeps (tests/test_minlstm.py measures them)."""
    return (16 if options["log_space"] else 9) * H


SPEC = CellSpec(
    build=minlstm,
    options={"log_space": log_space_option()},
    activations=("tanh",),
    inits=("normal",),
    theory=theory,
    label=label,
    cost=cost,
    help="Feng et al. (2024)'s minLSTM: gates of the input only, normalized, "
         "h_t = f' h + i' h~; exact gradient profile",
    order=6,
)
