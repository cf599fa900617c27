"""Gradient flossing (Engelken, NeurIPS 2023): the top k Lyapunov exponents of the network's
driven dynamics, computed differentiably by the QR method, are pushed toward 0 by gradient
descent on their sum of squares, so that gradients neither vanish nor explode over long times.

The regularizer is sum_{i<=k} lambda_i^2, with lambda_i the mean of log |R_ii| of the QR
decomposition of J_t Q_{t-1} (QR every step) over `length` steps after a `burn_in` without
gradient, averaged over the sequences of a task batch (each driving the network from its
initial state, tiled if shorter: `floss_inputs`). `jnp.linalg.qr` is differentiable; the
gradient flows through the states, Jacobians and QR steps of the averaged steps only, because
through a chaotic trajectory it grows as exp(lambda_1 t) (see `make_floss_exponents`).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.flatten_util import ravel_pytree

from rnnjax.core.cells.base import Cell


class Floss(NamedTuple):
    """How a training run flosses (`rnnjax.core.train.Training.floss`)."""

    k: int  # exponents flossed
    weight: float  # the regularizer's factor in the training loss
    every: int | None  # floss at the training steps that are multiples of it; None: never
    length: int  # steps the exponents are averaged (and differentiated) over
    burn_in: int  # steps before them, without gradient


def floss_inputs(x: Array, length: int) -> Array:
    """A flossing trajectory's inputs: the sequences of x one after another, repeated if they
    are shorter than `length`, cut to `length` steps.

    Args:
      x: (B, T) tokens or (B, T, D) real inputs.
    Returns:
      (length,) or (length, D).
    """
    flat = x.reshape((-1,) + x.shape[2:])  # (B T, ...)
    reps = -(-length // flat.shape[0])
    return jnp.tile(flat, (reps,) + (1,) * (flat.ndim - 1))[:length]


def make_floss_exponents(cell: Cell, k: int, burn_in: int = 0) -> Callable[[Any, Array], Array]:
    """Builds `exponents(params, x) -> (k,)`: the top k Lyapunov exponents (natural log per
    step) of the cell's state driven by the one sequence x, from the initial state, by the QR
    method (QR every step), differentiable in the parameters.

    The first `burn_in` steps bring the state onto its attractor and the frame Q onto the
    leading directions; they are not averaged and no gradient flows through them. The gradient
    flows through the states, Jacobians and QR steps of the rest: keep it short, as the
    gradient through a chaotic trajectory grows as exp(lambda_1 t) and soon says nothing about
    the exponents (measured for a tanh RNN at g = 4: 3 to 5 steps lower lambda_1, 10 do not).
    A zero |R_ii| (a Jacobian of rank below k) counts as the float's smallest normal number, so
    that the log stays finite.

    Args:
      cell: the cell.
      k: how many exponents (at most the state's real dimension).
      burn_in: steps before the averaged ones.
    """

    def exponents(params, x: Array) -> Array:  # x (L,) or (L, D)
        s0 = cell.initial_state(params, 1)
        flat0, unravel = ravel_pytree(s0)
        n, is_complex = flat0.size, jnp.iscomplexobj(flat0)

        def to_vec(s):
            v = ravel_pytree(s)[0]
            return jnp.concatenate([v.real, v.imag]) if is_complex else v

        def from_vec(v):
            return unravel(v[:n] + 1j * v[n:] if is_complex else v)

        dtype = flat0.real.dtype
        tiny = jnp.finfo(dtype).tiny

        def run(params, carry, xs):
            def step(carry, x_t):
                s, Q = carry
                s_next, jvp = jax.linearize(lambda z: cell.step(params, z, x_t[None]), s)
                JQ = jax.vmap(lambda q: to_vec(jvp(from_vec(q))), in_axes=1, out_axes=1)(Q)
                Q, R = jnp.linalg.qr(JQ)
                return (s_next, Q), jnp.log(jnp.maximum(jnp.abs(jnp.diagonal(R)), tiny))

            return jax.lax.scan(step, carry, xs)

        Q0 = jnp.eye(to_vec(s0).size, k, dtype=dtype)
        start, _ = run(jax.lax.stop_gradient(params), (s0, Q0), x[:burn_in])
        _, logs = run(params, jax.lax.stop_gradient(start), x[burn_in:])  # (L - burn_in, k)
        return logs.mean(0)

    return exponents


def make_floss_loss(cell: Cell, k: int, length: int, burn_in: int = 0
                    ) -> Callable[[Any, Array], Array]:
    """Builds `floss_loss(params, x) -> ()`: sum_{i<=k} lambda_i^2, the exponents averaged over
    the sequences of the batch x (B, T...), each driving the network for burn_in + length steps
    (`floss_inputs`; `make_floss_exponents`)."""
    exponents = make_floss_exponents(cell, k, burn_in)

    def floss_loss(params, x: Array) -> Array:
        xs = jax.vmap(lambda seq: floss_inputs(seq[None], burn_in + length))(x)
        return jnp.sum(jax.vmap(exponents, (None, 0))(params, xs).mean(0) ** 2)

    return floss_loss


def add_floss_grads(floss: Floss, cell: Cell, grads, params, x: Array, step: Array):
    """`grads` plus weight * d(floss_loss)/d(params) at the steps that are multiples of
    `floss.every`; `grads` as they are at the others. The step is the same for every network
    under `vmap`, so the branch stays a branch."""
    floss_loss = make_floss_loss(cell, floss.k, floss.length, floss.burn_in)

    def flossed(grads):
        g = jax.grad(floss_loss)(params, x)
        return jax.tree.map(lambda a, b: a + floss.weight * b, grads, g)

    return jax.lax.cond(step % floss.every == 0, flossed, lambda g: g, grads)


def make_floss_chunk(cell: Cell, floss: Floss, tx: optax.GradientTransformation,
                     train_batch: Callable, n: int) -> Callable:
    """Builds `floss_chunk(params, opt_state, key, start) -> (params, opt_state, values (n,))`:
    n optimizer steps on weight * floss_loss alone (flossing before training), each on the
    inputs of the task's training batch of that step (`train_batch(key, step)`); values are
    the regularizer before each step. A non-finite gradient leaves the parameters as they are.
    """
    floss_loss = make_floss_loss(cell, floss.k, floss.length, floss.burn_in)

    def step(carry, i):
        params, opt_state, key = carry
        x = train_batch(key, i)[0]
        value, grads = jax.value_and_grad(floss_loss)(params, x)
        grads = jax.tree.map(lambda g: floss.weight * g, grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        ok = jnp.isfinite(optax.tree.norm(grads))
        params, opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b),
                                         (optax.apply_updates(params, updates), new_opt),
                                         (params, opt_state))
        return (params, opt_state, key), value

    def floss_chunk(params, opt_state, key: Array, start: Array):
        (params, opt_state, _), values = jax.lax.scan(step, (params, opt_state, key),
                                                      start + jnp.arange(n))
        return params, opt_state, values

    return floss_chunk


__all__ = ["Floss", "add_floss_grads", "floss_inputs", "make_floss_chunk",
           "make_floss_exponents", "make_floss_loss"]
