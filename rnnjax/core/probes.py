"""The per-timestep gradient probe of any recurrent cell: ||dL/dH_t|| and step t's share of the
gradient of the recurrent weights, for every t, from one forward and one backward scan.

Everything here is pure and jit-safe; `jax.jit(jax.vmap(probe))` is applied where a job runs.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells import Cell, finite, log10_norm
from rnnjax.core.losses import make_loss, truncation_scale
from rnnjax.core.scan import (
    adjoint,
    coefficients,
    linear_recurrence,
    linear_terms,
    resolve_scan,
)


class ProbeResult(NamedTuple):
    """What one probe call returns for one network (a leading seed axis S under `vmap`).

    Norms are log10, so that a norm of finite entries is reported exactly even beyond the
    dtype's range (see `rnnjax.core.cells.log10_norm`): -inf is a norm that underflowed to 0.
    """

    loss: Array  # () batch-mean loss L
    # A stack of L layers (`Cell.layers` > 1) has a norm per layer: (T, L) where (T,) is said.
    log10_grad_norm: Array  # (T,) log10 ||dL/dH_t||_F over the batch, total derivative
    log10_param_grad_norm: Array  # (T,) log10 of the norm of step t's share of dL/d(recurrent)
    # (T,) bool: an entry of dL/dH_s left the dtype's range for some s >= t, so the backward
    # chain is lost from there back to t = 1; the norms read inf there
    overflow: Array
    # () int32: the first t whose state H_t is not finite (the forward pass overflowed: the loss
    # and every norm are then NaN); 0 when the forward pass is finite
    forward_overflow_t: Array
    taps: dict[str, Array]  # tap name -> (T,) log10 norms of the cell's extra total derivatives


# Steps whose parameter-gradient shares the parallel probe forms at once (beyond this many, a
# lax.map over chunks): the share of one step is the size of the recurrent parameters, so T of
# them at once would hold T copies of those parameters.
SHARE_CHUNK = 256

# probe.unroll's default (steps per iteration of both scans) by JAX backend, as measured by
# `rnnjax.bench.probe` (its unroll table): on a GPU each iteration of a scan costs kernel launches
# that dwarf a small step's arithmetic, so 16 steps per iteration ran fastest on an H100; on a
# CPU an iteration costs little and unrolling only lengthens compilation.
DEFAULT_UNROLL = {"gpu": 16, "cpu": 1}


def default_unroll(backend: str | None = None) -> int:
    """probe.unroll's default on `backend` (None: JAX's default backend): DEFAULT_UNROLL's
    entry, the GPU's for "cuda" and "rocm", the CPU's for anything else."""
    backend = backend or jax.default_backend()
    return DEFAULT_UNROLL["gpu" if backend in ("gpu", "cuda", "rocm") else "cpu"]


def hidden_log10_norm(cell: Cell, g) -> Array:
    """log10 ||dL/dH_t|| of the total derivative g (a cotangent of the state): the norm over
    every entry of `cell.hidden(g)`, (); for a stack of L layers (`cell.layers` > 1, g each
    layer's total derivative) one norm per layer, (L,). Both scans (sequential here, parallel
    in `rnnjax.core.scan`) report grad_norm through this one function."""
    if cell.layers > 1:
        return jnp.stack([log10_norm(h) for h in cell.hidden(g)])
    return log10_norm(cell.hidden(g))


def generic_backward(cell: Cell) -> Callable:
    """The probe's backward step for any cell, by `jax.vjp` of its step (recomputed from the
    stored previous state and x_t).

    Returns:
      backward(params, state_prev, state, x_t, g) -> (cotangent of state_prev, log10 norm of the
      recurrent parameters' share of the gradient, {tap: log10 norm of its total derivative}),
      for g the total derivative dL/d(state_t).
    """
    step = cell.tapped_step if cell.taps else (lambda p, s, x, taps: cell.step(p, s, x))

    def backward(params, state_prev, state, x_t, g):
        del state  # recomputed inside the vjp
        rec = {k: getattr(params, k) for k in cell.recurrent}
        taps = {k: jnp.zeros_like(cell.hidden(state_prev)) for k in cell.taps}

        def f(rec, s, taps):
            return step(params._replace(**rec), s, x_t, taps)

        _, vjp = jax.vjp(f, rec, state_prev, taps)
        rec_bar, s_bar, taps_bar = vjp(g)
        return s_bar, log10_norm(rec_bar), {k: log10_norm(v) for k, v in taps_bar.items()}

    return backward


def finish(result: type, value: Array, lg: Array, lpg: Array, ltaps: dict, overflowed: Array,
           forward_overflow_t: Array):
    """The ProbeResult (`result`) of both scans from their norms: with a finite forward pass, a
    non-finite gradient can only come from an overflow (inf from there back to t = 1, flagged);
    without one, no gradient is defined (the loss is not finite): NaN throughout, even where a
    relu's zero derivative would have turned NaN into 0."""
    defined = (forward_overflow_t == 0) & jnp.isfinite(value)
    overflow = overflowed & defined

    def flag(a):
        over = overflow.reshape(overflow.shape + (1,) * (a.ndim - overflow.ndim))
        return jnp.where(defined, jnp.where(over, jnp.inf, a), jnp.nan)

    return result(loss=value, log10_grad_norm=flag(lg), log10_param_grad_norm=flag(lpg),
                  overflow=overflow, forward_overflow_t=forward_overflow_t,
                  taps={k: flag(v) for k, v in ltaps.items()})


def make_probe(cell: Cell, loss_at: str, kind: str = "tokens", truncate: int | None = None,
               unroll: int | None = None, scan: str | None = None
               ) -> Callable[..., ProbeResult]:
    """Builds `probe(params, x, y) -> ProbeResult` for one network and one batch.

    One forward scan keeps the states (the only trajectory-sized arrays); the read-out's
    gradient of every step is taken at once from them; one backward scan then runs BPTT from
    t = T down to 1,

        dL/ds_t = dl/ds_t + s_{t+1} (d step_{t+1} / d s_t)^T dL/ds_{t+1},

    with the vector-Jacobian product of the cell's step (`jax.vjp`, or the cell's own faster
    `backward`, which the tests hold to the generic one), and emits each step's norms, so memory
    stays near one trajectory however long T is.

    A float overflow in the backward chain is reported as inf from the step it happened back
    to t = 1 (the chain cannot be continued there) and flagged (`overflow`), rather than the NaN
    that inf * 0 gives. A forward pass that is not finite is flagged by `forward_overflow_t`.

    Args:
      cell: the recurrent cell.
      loss_at: "all" (the loss averaged over every step) or "last" (the last step only).
      kind: "tokens" (softmax cross-entropy) or "regression" (squared error at the last step).
      truncate: None for full BPTT; k to stop the gradient every k steps (truncated BPTT).
      unroll: steps per iteration of both scans (`lax.scan`'s unroll); None: the backend's
        default (`default_unroll`). The sequential scan's only.
      scan: "sequential" (this function's `lax.scan`s), "parallel" (associative scans in time,
        `make_parallel_probe`, for a cell with a linear form `Cell.linear`), or None: the
        backend's default for a cell with a linear form (`rnnjax.core.scan.DEFAULT_SCAN`:
        parallel on a GPU, sequential on a CPU), else sequential.

    Returns:
      A pure function of (params, x (B, T) int or (B, T, D) float, y); vmap it over networks and
      jit it at the call site.
    """
    loss = make_loss(kind, loss_at)  # checks kind and loss_at now, not at trace time
    if resolve_scan(cell, scan) == "parallel":
        return make_parallel_probe(cell, loss_at, kind, truncate)
    backward = cell.backward or generic_backward(cell)
    unroll = default_unroll() if unroll is None else unroll

    def probe(params, x: Array, y: Array) -> ProbeResult:
        B, T = x.shape[:2]
        xs = jnp.swapaxes(x, 0, 1)  # (T, B) or (T, B, D)
        s0 = cell.initial_state(params, B)

        def forward_step(carry, inputs):
            s, bad_t = carry
            x_t, t = inputs
            s = cell.step(params, s, x_t)
            bad_t = jnp.where((bad_t == 0) & ~finite(s), t, bad_t)
            # With the loss over all steps, the outputs too (inside the scan: under vmap a
            # read-out of the stacked states would copy them into a batched matmul's layout).
            return (s, bad_t), (s, cell.readout(params, s)) if loss_at == "all" else s

        t1 = jnp.arange(1, T + 1, dtype=jnp.int32)
        (_, forward_overflow_t), ys = jax.lax.scan(
            forward_step, (s0, jnp.zeros((), jnp.int32)), (xs, t1), unroll=unroll)

        # The loss's gradient with respect to every step's outputs at once: one batched softmax
        # (or squared-error) gradient over (T, B, Q); the read-out's vjp then takes it to the
        # state inside the backward scan (a (B, Q) x (Q, H) product per step).
        if loss_at == "all":
            states, outputs = ys
            value, dO = jax.value_and_grad(lambda o: loss(o, y))(outputs)
        else:  # only the last step carries loss: it starts the backward chain
            states = ys
            last = jax.tree.map(lambda a: a[-1], states)
            value, start = jax.value_and_grad(
                lambda s: loss(cell.readout(params, s)[None], y))(last)
        dtype = jax.tree.leaves(s0)[0].real.dtype
        scale = truncation_scale(T, truncate, dtype)

        def local(s, dO_t):
            return jax.vjp(lambda z: cell.readout(params, z), s)[1](dO_t)[0]

        # The backward scan reads the states as its xs (under vmap a scan's xs keep the layout
        # the forward scan produced; indexing the stack instead would copy it). Iteration i
        # holds s_i (0-based) and carries s_{i+1} with its complete total derivative g_{i+1},
        # so it runs step i + 1's backward; step 0's runs after the scan, from s0.
        def step_back(g, s_prev, s, x_t, scale_t):
            # a stack's backward also returns each layer's total derivative (`Cell.layers`)
            to_earlier, log_pg, log_taps, *total = backward(params, s_prev, s, x_t, g)
            if scale_t is not None:
                to_earlier = jax.tree.map(lambda a: scale_t.astype(a.dtype) * a, to_earlier)
            return to_earlier, (hidden_log10_norm(cell, total[0] if total else g), log_pg,
                                log_taps)

        zero = jax.tree.map(jnp.zeros_like, s0)
        shift = {"x": jnp.roll(xs, -1, axis=0)}  # x_{i+1} at i (x_T at T - 1 is never used)
        if scale is not None:
            shift["scale"] = jnp.roll(scale, -1)
        if loss_at == "all":
            shift["dO"] = dO

        def backward_step(carry, inputs):
            g_after, after, overflowed, i = carry
            s_i = inputs["s"]
            to_earlier, norms = step_back(g_after, s_i, after, inputs["x"], inputs.get("scale"))
            first = i == T - 1  # nothing after the last step: its backward runs next iteration
            g = jax.tree.map(lambda a: jnp.where(first, 0, a), to_earlier)
            if loss_at == "all":
                g = jax.tree.map(jnp.add, g, local(s_i, inputs["dO"]))
            else:
                g = jax.tree.map(lambda a, b: jnp.where(first, b, a), g, start)
            overflowed = overflowed | (~first & ~finite(g_after))
            return (g, s_i, overflowed, i - 1), (norms, overflowed)

        init = (zero, zero, jnp.zeros((), bool), jnp.asarray(T - 1))
        (g0, s1, overflowed, _), (norms, over) = jax.lax.scan(
            backward_step, init, {"s": states, **shift}, reverse=True, unroll=unroll)
        _, norms0 = step_back(g0, s0, s1, xs[0], None)
        over0 = overflowed | ~finite(g0)
        # ys[i] is step i + 1's (i < T - 1); ys[T - 1] is the unused first iteration's
        lg, lpg, ltaps = jax.tree.map(lambda a0, a: jnp.concatenate([a0[None], a[:-1]]),
                                      norms0, norms)
        overflowed = jnp.concatenate([over0[None], over[:-1]])
        return finish(ProbeResult, value, lg, lpg, ltaps, overflowed, forward_overflow_t)

    return probe


def make_parallel_probe(cell: Cell, loss_at: str, kind: str = "tokens",
                        truncate: int | None = None) -> Callable:
    """`make_probe`'s probe by parallel scans in time (`rnnjax.core.scan`): the same
    ProbeResult, O(log T) deep.

    The forward pass is one associative scan; the loss's gradient at every state is taken at
    once; the adjoint is one reverse associative scan; each step's norms are then elementwise in
    time (its parameter share is `backward` of that step alone, in chunks of SHARE_CHUNK steps).
    """
    resolve_scan(cell, "parallel")
    loss = make_loss(kind, loss_at)
    backward = cell.backward or generic_backward(cell)

    def probe(params, x: Array, y: Array):
        B, T = x.shape[:2]
        xs = jnp.swapaxes(x, 0, 1)
        s0 = cell.initial_state(params, B)
        a, b = linear_terms(cell, params, xs, s0)
        states = linear_recurrence(a, b, s0, cell.linear_log)
        bad = jax.vmap(lambda s: ~finite(s))(states)
        forward_overflow_t = jnp.where(jnp.any(bad), jnp.argmax(bad) + 1, 0).astype(jnp.int32)

        def local(s, dO_t):
            return jax.vjp(lambda z: cell.readout(params, z), s)[1](dO_t)[0]

        if loss_at == "all":
            outputs = jax.vmap(cell.readout, (None, 0))(params, states)
            value, dO = jax.value_and_grad(lambda o: loss(o, y))(outputs)
            ls = jax.vmap(local)(states, dO)
        else:
            last = jax.tree.map(lambda v: v[-1], states)
            value, start = jax.value_and_grad(
                lambda s: loss(cell.readout(params, s)[None], y))(last)
            ls = jax.tree.map(lambda s, l: jnp.zeros_like(s).at[-1].set(l), states, start)
        dtype = jax.tree.leaves(s0)[0].real.dtype
        g = adjoint(coefficients(cell, a), ls, truncation_scale(T, truncate, dtype))

        prev = jax.tree.map(lambda z, s: jnp.concatenate([z[None], s[:-1]]), s0, states)

        def norms(args):
            s_prev, s, x_t, g_t = args
            _, log_pg, log_taps = backward(params, s_prev, s, x_t, g_t)
            return hidden_log10_norm(cell, g_t), log_pg, log_taps, ~finite(g_t)

        every = (prev, states, xs, g)
        lg, lpg, ltaps, nonfinite = (jax.vmap(norms)(every) if T <= SHARE_CHUNK else
                                     jax.lax.map(norms, every, batch_size=SHARE_CHUNK))
        # an entry of dL/dh_s left the dtype's range for some s >= t
        overflowed = jnp.flip(jnp.cumsum(jnp.flip(nonfinite)) > 0)
        return finish(ProbeResult, value, lg, lpg, ltaps, overflowed, forward_overflow_t)

    return probe
