"""Parallel scans in time for cells whose step is linear in the state given the inputs:

    h_t = a_t * h_{t-1} + b_t        (elementwise, leaf by leaf; a_t, b_t functions of x_t)

the LRU, minGRU, minLSTM and S6 (`Cell.linear`). Such a recurrence composes associatively,
(a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2), so `jax.lax.associative_scan` computes all T
states in O(log T) depth. Its adjoint is the reverse linear recurrence

    dL/dh_t = dl_t/dh_t + s_{t+1} a_{t+1} * dL/dh_{t+1}

(s the truncated BPTT factors, 1 for full BPTT), again an associative scan, and step t's share
of the parameter gradient is the vector-Jacobian product of step t alone at dL/dh_t: elementwise
in time. So the whole probe, and the training step's forward and backward pass, are O(log T)
deep instead of T sequential steps.

Log-space cells (`Cell.linear_log`, the minGRU's and minLSTM's `log_space=true`) give
(log a_t, log b_t) and a positive state: the forward pass composes in log space,
(la1, lb1) then (la2, lb2) = (la1 + la2, logaddexp(la2 + lb1, lb2)), as the paper's parallel
mode does; the adjoint is the same linear recurrence with a_t = exp(log a_t).

Numerics: the parallel scan multiplies the coefficients together before it meets the loss's
gradient (the sequential chain multiplies the gradient step by step), so a product that falls
below the dtype's smallest normal number (1e-38 in float32) is flushed to 0 a little earlier
than the sequential chain would flush the gradient; both agree to 1e-5 relative in float32
wherever the sequential gradient is above that range (tests/test_scan.py).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells import Cell

SCANS = ("sequential", "parallel")  # probe.scan's values (null: parallel where it applies)


# probe.scan's default (null) for a cell with a linear form, by JAX backend. On a CPU the
# sequential scan was measured faster for every linear cell, T = 16 to 16384, in the probe (2 to
# 3.7 times) and in training (up to 4.5 times): a CPU runs one step at a time anyway, and the
# associative scan does about twice the work and 5 to 8 times the memory traffic (`rnnjax
# bench`, docs/benchmarks.md "Parallel against sequential scans"). On a GPU the parallel
# scan's O(log T) depth is expected to win; not yet measured there.
DEFAULT_SCAN = {"gpu": "parallel", "cpu": "sequential"}


def resolve_scan(cell: Cell, scan: str | None, backend: str | None = None) -> str:
    """probe.scan for `cell`: None picks DEFAULT_SCAN's entry for `backend` (None: JAX's
    default backend; "cuda" and "rocm" are GPUs) for a cell with a linear form, else
    "sequential"; "parallel" for a cell without one is a ValueError (one line)."""
    if scan is None:
        if cell.linear is None:
            return "sequential"
        backend = backend or jax.default_backend()
        return DEFAULT_SCAN["gpu" if backend in ("gpu", "cuda", "rocm") else "cpu"]
    if scan not in SCANS:
        raise ValueError(f"probe.scan={scan} is unknown; allowed: {', '.join(SCANS)}, null")
    if scan == "parallel" and cell.linear is None:
        raise ValueError(f"probe.scan=parallel needs a cell whose step is linear in its state "
                         f"(Cell.linear); cell={cell.name} is not: use probe.scan=sequential")
    return scan


def _compose(log: bool) -> Callable:
    """The associative operator on (a, b) pytrees: `earlier` then `later`."""
    def mul(e1, e2):
        (a1, b1), (a2, b2) = e1, e2
        return (jax.tree.map(jnp.multiply, a2, a1),
                jax.tree.map(lambda a, b, c: a * b + c, a2, b1, b2))

    def logs(e1, e2):
        (a1, b1), (a2, b2) = e1, e2
        return (jax.tree.map(jnp.add, a2, a1),
                jax.tree.map(lambda a, b, c: jnp.logaddexp(a + b, c), a2, b1, b2))

    return logs if log else mul


def linear_recurrence(a, b, h0, log: bool = False):
    """h_1..h_T of h_t = a_t * h_{t-1} + b_t by `jax.lax.associative_scan`.

    Args:
      a, b: pytrees shaped like the state with a leading time axis T (leaves (T, ...)); with
        `log`, log a_t and log b_t.
      h0: the state before the first step (leaves (...)), positive with `log`.
      log: compose in log space (h_t = exp(logaddexp(log a_t + log h_{t-1}, log b_t))).

    Returns:
      The states after every step, leaves (T, ...).
    """
    if log:  # fold h_0 into the first step: log b_1 <- logaddexp(log a_1 + log h_0, log b_1)
        b = jax.tree.map(lambda a_, b_, h: b_.at[0].set(jnp.logaddexp(a_[0] + jnp.log(h), b_[0])),
                         a, b, h0)
    else:
        b = jax.tree.map(lambda a_, b_, h: b_.at[0].add(a_[0] * h), a, b, h0)
    _, h = jax.lax.associative_scan(_compose(log), (a, b))
    return jnp_exp_tree(h) if log else h


def jnp_exp_tree(tree):
    return jax.tree.map(jnp.exp, tree)


def adjoint(a, local, scale: Array | None):
    """dL/dh_t for t = 1..T: g_t = l_t + s_{t+1} a_{t+1} * g_{t+1}, g_T = l_T, by a reverse
    associative scan.

    Args:
      a: the coefficients a_t (not logs), leaves (T, ...) shaped like the state.
      local: l_t, the loss's own gradient at each state (leaves (T, ...)).
      scale: (T,) truncated BPTT factors s_t (the gradient from step t into h_{t-1}), or None.

    Returns:
      g, leaves (T, ...). (JAX's cotangents are transposes, not adjoints: for a complex state
      the coefficient is a_{t+1} itself, not its conjugate.)
    """
    def coefficient(a_):
        if scale is not None:
            a_ = a_ * scale.astype(a_.real.dtype).reshape((-1,) + (1,) * (a_.ndim - 1))
        return jnp.roll(a_, -1, axis=0)  # a_{t+1} at t (the last entry multiplies g_{T+1} = 0)

    flip = functools.partial(jax.tree.map, lambda v: jnp.flip(v, axis=0))
    zero = jax.tree.map(lambda v: jnp.zeros_like(v[0]), local)
    g = linear_recurrence(flip(jax.tree.map(coefficient, a)), flip(local), zero)
    return flip(g)


def linear_terms(cell: Cell, params, xs: Array, s0):
    """(a, b) of every step: `cell.linear` vmapped over time, each leaf broadcast to (T,) + the
    state leaf's shape (a cell may give a per-unit coefficient, e.g. the LRU's lambda (H,))."""
    a, b = jax.vmap(cell.linear, (None, 0))(params, xs)

    def full(v, s):
        v = v.reshape(v.shape[:1] + (1,) * (s.ndim + 1 - v.ndim) + v.shape[1:])
        return jnp.broadcast_to(v, v.shape[:1] + s.shape).astype(
            jnp.result_type(v.dtype, s.dtype))

    return jax.tree.map(full, a, s0), jax.tree.map(full, b, s0)


def coefficients(cell: Cell, a):
    """a_t itself (exp of the log-space cells' log a_t)."""
    return jnp_exp_tree(a) if cell.linear_log else a


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _states(a, b, h0, scale, log):
    return linear_recurrence(a, b, h0, log)


def _states_fwd(a, b, h0, scale, log):
    h = linear_recurrence(a, b, h0, log)
    return h, (a, b, h0, h, scale)


def _states_bwd(log, res, ct):
    a, b, h0, h, scale = res
    coef = jnp_exp_tree(a) if log else a
    g = adjoint(coef, ct, scale)
    h_prev = jax.tree.map(lambda z, hs: jnp.concatenate([z[None], hs[:-1]]), h0, h)
    s1 = 1 if scale is None else scale[0]
    h0_bar = jax.tree.map(lambda c, g_: (s1 * c[0] * g_[0]).astype(g_.dtype), coef, g)
    if log:  # h_t = a_t h_{t-1} + exp(lb_t): d/d(log a_t) = a_t h_{t-1}, d/d(log b_t) = exp(lb_t)
        a_bar = jax.tree.map(lambda g_, c, hp: g_ * c * hp, g, coef, h_prev)
        b_bar = jax.tree.map(lambda g_, lb: g_ * jnp.exp(lb), g, b)
    else:
        a_bar = jax.tree.map(jnp.multiply, g, h_prev)
        b_bar = g
    return a_bar, b_bar, h0_bar, None if scale is None else jnp.zeros_like(scale)


_states.defvjp(_states_fwd, _states_bwd)


def parallel_unroll(cell: Cell, params, x: Array, grad_scale: Array | None = None):
    """The states after every step (leaves (T, B, ...)), by the parallel scan, differentiable:
    the gradient runs the adjoint scan (`adjoint`), with `grad_scale` (T,) the truncated or
    randomized BPTT factors (as `rnnjax.core.cells.unroll`'s). For training and evaluation."""
    xs = jnp.swapaxes(x, 0, 1)
    s0 = cell.initial_state(params, x.shape[0])
    a, b = linear_terms(cell, params, xs, s0)
    return _states(a, b, s0, grad_scale, cell.linear_log)
