"""The time-to-time map: which loss step reaches which timestep. With the loss averaged over all
steps, L = (1/T) sum_s L_s, it measures log10 ||d(L_s / T)/dH_t|| for every loss step s and every
timestep t <= s, from one forward scan and one backward scan vmapped over the loss positions s.

Each entry is the gradient of the loss term as it enters L (L_s / T, L_s the batch-mean loss at
step s), so that sum_s d(L_s / T)/dH_t = dL/dH_t, the gradient whose norm the probe reports
(`rnnjax.core.probes`, loss_at="all"); the row s = T is the probe's loss_at="last" profile less
log10 T.

It costs T backward passes (O(T^2) steps of the cell's vjp) and a (T, T) map per network; the
carry of the backward scan holds T cotangents of the state. `MAX_T` caps T.

Everything here is pure and jit-safe; `jax.jit(jax.vmap(time_map))` is applied where a job runs.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells import Cell, finite
from rnnjax.core.losses import make_loss, truncation_scale
from rnnjax.core.probes import default_unroll, hidden_log10_norm

# The largest T the time map takes (probe.time_map): T backward passes of T steps each, 1024^2
# ~ 1e6 step vjps per network, and a map of T^2 floats per network (T(T+1)/2 rows per network
# in time_map.parquet: 0.5 million at T = 1024).
MAX_T = 1024


class TimeMap(NamedTuple):
    """What one time-map call returns for one network (a leading seed axis S under `vmap`).

    Norms are log10 (exact beyond the dtype's range, see `rnnjax.core.cells.log10_norm`).
    """

    loss: Array  # () batch-mean loss L over all steps
    # (T, T) log10 ||d(L_s / T)/dH_t||_F over the batch, [s - 1, t - 1]; -inf for s < t (a loss
    # step never reaches a later timestep), inf where the backward chain of loss step s left the
    # dtype's range at t or later, NaN throughout when the forward pass was not finite
    log10_grad_norm: Array
    forward_overflow_t: Array  # () int32: the first t whose H_t is not finite; 0 when finite


def time_map_error(T: int) -> str | None:
    """The one-line error for a T the time map does not take (over `MAX_T`), else None."""
    if T > MAX_T:
        return (f"probe.time_map=true computes T backward passes of T steps (O(T^2)): it takes "
                f"T <= {MAX_T} timesteps, this job has T={T}; use a smaller seq_len or "
                "probe.time_map=false")
    return None


def make_time_map(cell: Cell, kind: str = "tokens", truncate: int | None = None,
                  unroll: int | None = None) -> Callable[..., TimeMap]:
    """Builds `time_map(params, x, y) -> TimeMap` for one network and one batch, the loss
    averaged over all steps.

    One forward scan keeps the states; the gradient of every step's own loss term at its state
    (the read-out's vjp of dL/do_s) seeds backward pass s; one backward scan from t = T down to
    1 carries the T passes' cotangents at once, each step's vjp (`jax.vjp` of the cell's step,
    linearized once per step) vmapped over them, and emits the norms of all T at every t.

    Args:
      cell: a recurrent cell of one layer (`Cell.layers` == 1).
      kind: "tokens" (softmax cross-entropy at every step); the regression task is scored at
        the last step only and has no map.
      truncate: None for full BPTT; k to stop the gradient every k steps, as the probe does.
      unroll: steps per iteration of both scans; None: the backend's default
        (`rnnjax.core.probes.default_unroll`).

    Returns:
      A pure function of (params, x (B, T) int or (B, T, D) float, y (B, T)); vmap it over
      networks and jit it at the call site.

    Raises:
      ValueError: a stack of layers, or a kind scored at the last step only.
    """
    if cell.layers > 1:
        raise ValueError(f"the time map takes one layer; this cell stacks {cell.layers} "
                         "(model.layers=1 or probe.time_map=false)")
    loss = make_loss(kind, "all")  # raises for the regression task
    unroll = default_unroll() if unroll is None else unroll

    def time_map(params, x: Array, y: Array) -> TimeMap:
        B, T = x.shape[:2]
        xs = jnp.swapaxes(x, 0, 1)  # (T, B) or (T, B, D)
        s0 = cell.initial_state(params, B)

        def forward_step(carry, inputs):
            s, bad_t = carry
            x_t, t = inputs
            s = cell.step(params, s, x_t)
            bad_t = jnp.where((bad_t == 0) & ~finite(s), t, bad_t)
            return (s, bad_t), (s, cell.readout(params, s))

        t1 = jnp.arange(1, T + 1, dtype=jnp.int32)
        (_, forward_overflow_t), (states, outputs) = jax.lax.scan(
            forward_step, (s0, jnp.zeros((), jnp.int32)), (xs, t1), unroll=unroll)
        value, dO = jax.value_and_grad(lambda o: loss(o, y))(outputs)  # dO_s = d(L_s / T)/do_s

        def seed(s, dO_s):  # d(L_s / T)/d(state_s): where backward pass s starts
            return jax.vjp(lambda z: cell.readout(params, z), s)[1](dO_s)[0]

        prev = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b[:-1]]), s0, states)
        scale = truncation_scale(T, truncate, jax.tree.leaves(s0)[0].real.dtype)
        inputs = {"s": states, "prev": prev, "x": xs, "dO": dO, "i": jnp.arange(T)}
        if scale is not None:
            inputs["scale"] = scale

        # Iteration i (0-based step i + 1) holds g[s], the cotangent of state_i of backward
        # pass s (zero for s < i); it adds pass i's seed, emits every pass's norm at t = i + 1,
        # and takes all T passes to state_{i - 1} through the one linearization of step i.
        def backward_step(carry, inp):
            g, overflowed = carry
            g = jax.tree.map(lambda a, b: a.at[inp["i"]].add(b), g, seed(inp["s"], inp["dO"]))
            overflowed = overflowed | ~jax.vmap(finite)(g)
            norms = jax.vmap(lambda g_s: hidden_log10_norm(cell, g_s))(g)  # (T,) over s
            _, vjp = jax.vjp(lambda z: cell.step(params, z, inp["x"]), inp["prev"])
            to_earlier = jax.vmap(lambda g_s: vjp(g_s)[0])(g)
            if "scale" in inp:
                to_earlier = jax.tree.map(lambda a: inp["scale"].astype(a.dtype) * a, to_earlier)
            return (to_earlier, overflowed), (norms, overflowed)

        zero = jax.tree.map(lambda a: jnp.zeros((T,) + a.shape, a.dtype), s0)
        _, (norms, over) = jax.lax.scan(backward_step, (zero, jnp.zeros((T,), bool)), inputs,
                                        reverse=True, unroll=unroll)
        norms, over = norms.T, over.T  # [t, s] -> [s, t]
        defined = (forward_overflow_t == 0) & jnp.isfinite(value)
        lg = jnp.where(defined, jnp.where(over, jnp.inf, norms), jnp.nan)
        return TimeMap(loss=value, log10_grad_norm=lg, forward_overflow_t=forward_overflow_t)

    return time_map
