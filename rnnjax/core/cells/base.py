"""The Cell type and the helpers every cell shares.

Recurrent cells as values: a `Cell` is a handful of pure functions, built once from the
config and passed down to the probe, the trainer, evaluation, generation and theory.

A cell computes one step of one batch. Its state is any pytree of (B, ...) arrays (the LSTM's is
(h, c)); `hidden(state)` picks the hidden output H_t whose gradient `grad_norm` measures.
`lax.scan` over time lives in the callers (`rnnjax.core.probes`, `rnnjax.core.train`), `vmap` over
networks at the call site.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

Params = Any  # a NamedTuple of arrays (one network)
State = Any  # a pytree of (B, ...) arrays


class Cell(NamedTuple):
    """A recurrent cell: one step of one batch, its read-out and its parameters.

    Every function is pure and jit-safe; none closes over a batch or a key.
    """

    name: str  # the option of the config group `cell`
    # (key, D, H, Q, dtype) -> params: D inputs (tokens or channels), H hidden units, Q outputs
    init: Callable[..., Params]
    # (params, B) -> the state before the first step
    initial_state: Callable[[Params, int], State]
    # (params, state, x_t) -> state: x_t is (B,) integer tokens or (B, D) real inputs
    step: Callable[[Params, State, Array], State]
    # (params, state) -> o_t (B, Q)
    readout: Callable[[Params, State], Array]
    # state -> H_t (B, ...), any shape after the batch axis: a selection from the state (so it
    # also selects from its cotangent); grad_norm is the norm over all its entries
    hidden: Callable[[State], Array]
    # the parameter fields of the recurrence: param_grad_norm is the norm of step t's share of
    # their gradient
    recurrent: tuple[str, ...]
    # Extra total derivatives the probe reports, by name (the LSTM's "cell": dL/dC_t, column
    # `cell_grad_norm`). A tap is a zero perturbation, shaped like `hidden`'s output, added inside
    # the step; the gradient with respect to it is the total derivative at that point.
    taps: tuple[str, ...] = ()
    # (params, state, x_t, taps: dict name -> (B, ...)) -> state; needed when `taps` is not empty
    tapped_step: Callable[..., State] | None = None
    # An optional faster backward step for the probe, checked against the generic one in the
    # tests: (params, state_prev, state, x_t, cotangent of state) ->
    # (cotangent of state_prev, log10 norm of the recurrent parameters' share, {tap: log10 norm})
    backward: Callable[..., tuple[State, Array, dict[str, Array]]] | None = None
    # The cell's step as a recurrence linear in the state, for the parallel scan in time
    # (`probe.scan=parallel`, `rnnjax.core.scan`): (params, x_t) -> (a_t, b_t), two pytrees
    # shaped like the state (each leaf of a_t broadcastable to the state's leaf), such that
    # step(params, s, x_t) = a_t * s + b_t leaf by leaf. None: the cell is not linear in its
    # state (only the sequential scan applies). The tests hold it to `step`.
    linear: Callable[[Params, Array], tuple[State, State]] | None = None
    # `linear` returns (log a_t, log b_t) instead (a positive state, the log-space variants):
    # the parallel forward pass then composes in log space (logaddexp), and
    # step(params, s, x_t) = exp(logaddexp(log a_t + log s, log b_t)).
    linear_log: bool = False
    # How many layers the cell stacks (`rnnjax.core.cells.stack`); 1 for one cell. With L > 1,
    # `hidden` gives a tuple of the L layers' hidden outputs, the probe's norms get a trailing
    # layer axis (T, L), and `backward` returns a fourth value: each layer's total derivative
    # inside the step (a lower layer also reaches the loss through the layer above within the
    # same step, which the state's cotangent does not hold).
    layers: int = 1


def linear_step(linear: Callable[[Params, Array], tuple[State, State]], log: bool = False
                ) -> Callable[[Params, State, Array], State]:
    """A cell's `step` from its linear form (`Cell.linear`): a_t * s + b_t leaf by leaf, or with
    `log` (`Cell.linear_log`: log a_t, log b_t, a positive state)
    exp(logaddexp(log a_t + log s, log b_t)), so that the step and the parallel scan's terms are
    one piece of code."""
    def step(params, state, x_t):
        a, b = linear(params, x_t)
        if log:
            return jax.tree.map(lambda a, b, s: jnp.exp(jnp.logaddexp(a + jnp.log(s), b)),
                                a, b, state)
        return jax.tree.map(lambda a, b, s: a * s + b, a, b, state)

    return step


def finite(tree) -> Array:
    """() bool: every entry of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def unit(a: Array, m: Array) -> Array:
    """a / m for m = max |a| (> 0 and finite; else a itself), exact near the dtype's maximum.

    Why not a plain division: XLA may divide by multiplying with 1/m, and for m above ~1e38 in
    float32 that reciprocal is subnormal, which XLA on a CPU flushes to zero (the norm would
    read 0). Both are first scaled by an exact power of two.
    """
    dtype = a.real.dtype
    c = jnp.where(m > 2.0 ** (jnp.finfo(dtype).maxexp - 30), 2.0 ** -64, 1.0).astype(dtype)
    return (a * c) / jnp.where((m > 0) & jnp.isfinite(m), m * c, 1).astype(dtype)


def log10_norm(tree) -> Array:
    """log10 of the Frobenius norm of all the entries of `tree` (complex entries by modulus).

    Computed as log10(m) + log10 ||tree / m|| with m the largest modulus, so it is exact and
    finite whenever every entry is finite and one is non-zero, even where the norm itself is
    beyond the dtype's range (a float32 norm of finite entries can exceed 3.4e38): -inf when all
    entries are 0 (or below the dtype's normal range), inf when one is infinite, NaN when one
    is NaN.
    """
    mags = [jnp.abs(a) for a in jax.tree.leaves(tree)]
    m = jnp.max(jnp.stack([jnp.max(a) for a in mags]))
    s = sum(jnp.sum(jnp.square(unit(a, m))) for a in mags)
    return jnp.where(jnp.isposinf(m), jnp.inf, jnp.log10(m) + 0.5 * jnp.log10(s))


def scale_grad(tree, s: Array):
    """Returns `tree` unchanged, with the gradient flowing back through it multiplied by s.

    s = 0 is d2l's `detach` (truncated BPTT); s in {0, 1/pi} is randomized truncation.
    """
    def one(a):
        const = jax.lax.stop_gradient(a)
        return const + s.astype(a.real.dtype) * (a - const)

    return jax.tree.map(one, tree)


def unroll(cell: Cell, params: Params, x: Array, grad_scale: Array | None = None
           ) -> tuple[State, Array]:
    """Runs `cell` over a batch with `lax.scan`: the states after every step and the outputs.

    Args:
      cell: the cell.
      params: one network.
      x: (B, T) integer tokens or (B, T, D) real inputs.
      grad_scale: optional (T,) factor on the gradient flowing from step t back into the state
        of step t - 1 (truncated or randomized BPTT); None is full BPTT.

    Returns:
      states: the state after each step, stacked: leaves (T, B, ...).
      outputs: (T, B, Q) o_1..o_T (the read-out applied to all steps at once, outside the scan).
    """
    xs = {"x": jnp.swapaxes(x, 0, 1)}  # (T, B) or (T, B, D)
    if grad_scale is not None:
        xs["scale"] = grad_scale

    def step(state, inputs):
        if "scale" in inputs:
            state = scale_grad(state, inputs["scale"])
        state = cell.step(params, state, inputs["x"])
        return state, state

    _, states = jax.lax.scan(step, cell.initial_state(params, x.shape[0]), xs)
    return states, jax.vmap(cell.readout, (None, 0))(params, states)
