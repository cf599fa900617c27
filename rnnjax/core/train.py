"""Training with optax: the whole step is pure and jit-safe, and seeds train together by vmap.

A chunk of `log_every` steps is one `lax.scan`; the caller jits `vmap(train_chunk)` once, so the
host only logs between chunks.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from rnnjax.core.cells import Cell, scale_grad, unroll
from rnnjax.core.floss import Floss, add_floss_grads
from rnnjax.core.losses import make_loss, truncation_scale
from rnnjax.core.scan import parallel_unroll

OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam, "rmsprop": optax.rmsprop}
BPTT_MODES = ("full", "truncated", "randomized")  # see `bptt_scale`


class TrainState(NamedTuple):
    """One network's training state (a leading seed axis S under `vmap`)."""

    params: Any  # the cell's parameters
    opt_state: Any  # optax state
    alive: Array  # () bool: False once a loss or gradient was non-finite
    diverged_at: Array  # () int32: the first non-finite step, -1 while finite


class StepMetrics(NamedTuple):
    """Per-step metrics of one network, stacked over a chunk: (n,) each."""

    loss: Array  # training loss of the step (NaN once the seed has diverged)
    grad_norm: Array  # global gradient norm BEFORE clipping (NaN once diverged)
    clipped: Array  # bool: clipping was active (the norm exceeded train.clip)
    active: Array  # bool: the step was taken (alive and within the step budget)


def sequence_loss(cell: Cell, kind: str, loss_at: str, params, x: Array, y: Array,
                  mask: Array | None = None, grad_scale: Array | None = None) -> Array:
    """The batch-mean loss of one network, read out inside the scan over time.

    With the loss over all steps (tokens), each step's loss term is added inside the scan, so
    no (T, B, Q) array of outputs is formed (nor its gradient); otherwise only the last state is
    read out. Equal to `make_loss(kind, loss_at)` of `rnnjax.core.cells.unroll`'s outputs.

    Args:
      cell, kind, loss_at: the model and its loss.
      params: one network.
      x: (B, T) integer tokens or (B, T, D) real inputs; y: the targets.
      mask: optional (B,) weights of the sequences.
      grad_scale: optional (T,) factor on the gradient from step t into the state of step
        t - 1 (truncated or randomized BPTT), as in `rnnjax.core.cells.unroll`.

    Returns:
      () the loss.
    """
    loss = make_loss(kind, loss_at)
    B, T = x.shape[:2]
    per_step = kind == "tokens" and loss_at == "all"
    xs = {"x": jnp.swapaxes(x, 0, 1)}  # (T, B) or (T, B, D)
    if per_step:
        xs["y"] = y.T  # (T, B)
    if grad_scale is not None:
        xs["scale"] = grad_scale
    s0 = cell.initial_state(params, B)
    dtype = jax.eval_shape(cell.readout, params, s0).dtype

    def step(carry, inputs):
        state, total = carry
        if "scale" in inputs:
            state = scale_grad(state, inputs["scale"])
        state = cell.step(params, state, inputs["x"])
        if per_step:  # the mean over steps of each step's batch-mean term is the loss
            total = total + loss(cell.readout(params, state)[None], inputs["y"][:, None], mask)
        return (state, total), None

    (last, total), _ = jax.lax.scan(step, (s0, jnp.zeros((), dtype)), xs)
    if per_step:
        return total / T
    return loss(cell.readout(params, last)[None], y, mask)


def parallel_sequence_loss(cell: Cell, kind: str, loss_at: str, params, x: Array, y: Array,
                           mask: Array | None = None, grad_scale: Array | None = None) -> Array:
    """`sequence_loss` by the parallel scan in time (`probe.scan=parallel`, a cell with a linear
    form): the states by an associative scan (`rnnjax.core.scan.parallel_unroll`), whose
    gradient is the adjoint associative scan; the (T, B, Q) outputs are then formed at once."""
    loss = make_loss(kind, loss_at)
    states = parallel_unroll(cell, params, x, grad_scale)
    if kind == "tokens" and loss_at == "all":
        return loss(jax.vmap(cell.readout, (None, 0))(params, states), y, mask)
    return loss(cell.readout(params, jax.tree.map(lambda a: a[-1], states))[None], y, mask)


LOSSES = {"sequential": sequence_loss, "parallel": parallel_sequence_loss}  # by probe.scan


def make_optimizer(name: str, lr: float, clip: float | None,
                   clip_value: float | None = None, initial_scale: float = 0.0
                   ) -> optax.GradientTransformation:
    """optax's `name` optimizer, after element-wise clipping of every gradient entry to
    [-clip_value, clip_value] and then global-norm clipping at `clip` (None: not that one).
    `initial_scale` is RMSProp's initial mean square (optax's default 0 makes the first steps
    about lr * sqrt(1 / (1 - decay)) * sign(g), however small g is)."""
    chain = ([optax.clip(clip_value)] if clip_value is not None else []) + (
        [optax.clip_by_global_norm(clip)] if clip is not None else [])
    opt = (OPTIMIZERS[name](lr, initial_scale=initial_scale) if name == "rmsprop"
           else OPTIMIZERS[name](lr))
    return optax.chain(*chain, opt) if chain else opt


def bptt_scale(key: Array, T: int, mode: str, truncate: int | None, dtype) -> Array | None:
    """The (T,) gradient factors into H_{t-1} for one training step.

    full: None. truncated: 0 every `truncate` steps (d2l's detach). randomized (Tallec &
    Ollivier 2017; d2l 9.7): at each step the backward chain is kept with probability
    pi = 1 - 1/truncate and then scaled by 1/pi, so the gradient is unbiased and the expected
    truncation length is `truncate`.
    """
    if mode == "full":
        return None
    if mode == "truncated":
        return truncation_scale(T, truncate, dtype)
    pi = 1.0 - 1.0 / truncate
    keep = jax.random.bernoulli(key, pi, (T,))
    return jnp.where(keep, 1.0 / pi, 0.0).astype(dtype)


class Training(NamedTuple):
    """What a chunk of training steps does (`make_train_chunk`): the model and its loss, the
    optimizer, the data and the schedule."""

    cell: Cell
    loss_at: str  # "all" or "last", as for `make_probe`
    kind: str  # "tokens" or "regression"
    tx: optax.GradientTransformation  # the optax transformation (clipping included)
    train_batch: Callable  # (key, step) -> (x, y, mask), pure
    total_steps: int  # the step budget
    n: int  # steps per chunk
    bptt: str = "full"  # see `bptt_scale`
    truncate: int | None = None
    # the global-norm and element-wise clipping thresholds, to report whether clipping was
    # active (either one)
    clip: float | None = None
    clip_value: float | None = None
    # optional (key, start, n) -> batch(step), the same batches as train_batch, built once per
    # chunk (`rnnjax.core.tasks.Task.chunk_batches`)
    chunk_batches: Callable | None = None
    scan: str = "sequential"  # "sequential" or "parallel" (`sequence_loss`), as the probe's
    # gradient flossing during training (`rnnjax.core.floss.add_floss_grads`); None: none
    floss: Floss | None = None


def make_train_chunk(training: Training
                     ) -> Callable[[TrainState, Array, Array], tuple[TrainState, StepMetrics]]:
    """Builds `train_chunk(state, key, start) -> (state, metrics)`: steps start..start+n-1.

    Steps at or beyond `total_steps` are computed but not applied, so every chunk has the
    same shape (one compilation). A non-finite loss or gradient freezes that network where it
    is and records the step; the other networks (other vmap lanes) are unaffected.
    """
    (cell, loss_at, kind, tx, train_batch, total_steps, n, bptt, truncate, clip, clip_value,
     chunk_batches, scan, floss) = training
    make_loss(kind, loss_at)  # checks kind and loss_at now, not at trace time

    def loss_fn(params, x, y, mask, scale):
        return LOSSES[scan](cell, kind, loss_at, params, x, y, mask, scale)

    def step(carry, i, batch):
        state, key = carry
        k_data, k_bptt = jax.random.split(key)
        x, y, mask = batch(k_data, i)
        dtype = jax.tree.leaves(state.params)[0].dtype
        scale = bptt_scale(jax.random.fold_in(k_bptt, i), x.shape[1], bptt, truncate, dtype)
        value, grads = jax.value_and_grad(loss_fn)(state.params, x, y, mask, scale)
        if floss is not None:  # the loss reported stays the task's
            grads = add_floss_grads(floss, cell, grads, state.params, x, i)
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(value) & jnp.isfinite(gnorm)
        live = state.alive & (i < total_steps)
        take = live & finite

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)

        new_state = TrainState(
            params=pick(params, state.params),
            opt_state=pick(opt_state, state.opt_state),
            alive=state.alive & (finite | (i >= total_steps)),
            diverged_at=jnp.where(live & ~finite, i, state.diverged_at).astype(jnp.int32),
        )
        nan = jnp.nan
        clipped = jnp.zeros((), bool)
        if clip is not None:
            clipped = clipped | (gnorm > clip)
        if clip_value is not None:
            biggest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)]))
            clipped = clipped | (biggest > clip_value)
        clipped = live & clipped
        metrics = StepMetrics(jnp.where(take, value, nan), jnp.where(live, gnorm, nan),
                              clipped, live)
        return (new_state, key), metrics

    def train_chunk(state: TrainState, key: Array, start: Array):
        batch = train_batch
        if chunk_batches is not None:
            # the same data key as every step's (see `step`)
            at = chunk_batches(jax.random.split(key)[0], start, n)
            batch = lambda k, i: at(i)  # noqa: E731
        (state, _), metrics = jax.lax.scan(lambda c, i: step(c, i, batch), (state, key),
                                           start + jnp.arange(n))
        return state, metrics

    return train_chunk


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    """The training state of one network at step 0."""
    return TrainState(params, tx.init(params), jnp.ones((), bool), jnp.full((), -1, jnp.int32))


def make_eval(cell: Cell, loss_at: str, kind: str, scan: str = "sequential"
              ) -> Callable[..., Array]:
    """`evaluate(params, x, y) -> loss` on a whole (validation) set (`sequence_loss`)."""
    make_loss(kind, loss_at)  # checks kind and loss_at now, not at trace time

    def evaluate(params, x: Array, y: Array) -> Array:
        return LOSSES[scan](cell, kind, loss_at, params, x, y)

    return evaluate


def make_accuracy(cell: Cell, accuracy: Callable[[Array, Array], Array]
                  ) -> Callable[..., Array]:
    """`evaluate(params, x, y) -> accuracy` on a whole (validation) set: the task's
    `accuracy(outputs (T, B, Q), y)` (`rnnjax.core.tasks.Task.accuracy`) of the outputs at
    every step."""
    return lambda params, x, y: accuracy(unroll(cell, params, x)[1], y)


def make_generate(cell: Cell, num_preds: int) -> Callable[..., Array]:
    """d2l's `predict`: warm up on a prefix, then append the argmax token `num_preds` times.

    Returns:
      generate(params, prefix (P,) int) -> (num_preds,) int tokens.
    """

    def generate(params, prefix: Array) -> Array:
        states, _ = unroll(cell, params, prefix[None, :])  # leaves (P, 1, ...)

        def step(state, _):
            tok = jnp.argmax(cell.readout(params, state), axis=-1)  # (1,)
            return cell.step(params, state, tok), tok[0]

        last = jax.tree.map(lambda a: a[-1], states)
        _, toks = jax.lax.scan(step, last, None, length=num_preds)
        return toks

    return generate


__all__ = ["BPTT_MODES", "LOSSES", "OPTIMIZERS", "StepMetrics", "TrainState", "Training",
           "bptt_scale", "init_state", "make_accuracy", "make_eval", "make_generate",
           "make_optimizer", "make_train_chunk", "parallel_sequence_loss", "sequence_loss"]
