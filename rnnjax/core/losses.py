"""Losses of the tasks, and the gradient factors of truncated BPTT: shared by the probe and the
trainer."""

from collections.abc import Callable

import jax.numpy as jnp
import optax
from jax import Array

LOSS_AT = ("all", "last")
LOSS_KINDS = ("tokens", "regression")


def token_loss(logits: Array, y: Array, loss_at: str, mask: Array | None = None) -> Array:
    """Batch-mean softmax cross-entropy, over all steps or at the last step only.

    Args:
      logits: (T, B, Q).
      y: (B, T) integer targets.
      loss_at: "all" (mean over every step and sequence) or "last" (mean over sequences at T;
        with logits of one step, (1, B, Q), that step is taken as the last).
      mask: optional (B,) weights of the sequences (0 for padding); None weighs all equally.
    """
    if loss_at == "all":
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y.T).mean(0)  # (B,)
    elif loss_at == "last":
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[-1], y[:, -1])  # (B,)
    else:
        raise ValueError(f"probe.loss_at={loss_at!r} is unknown; allowed: {list(LOSS_AT)}")
    if mask is None:
        return ce.mean()
    return jnp.sum(ce * mask) / jnp.sum(mask)


def regression_loss(outputs: Array, y: Array, mask: Array | None = None) -> Array:
    """Batch-mean squared error of the last output (the adding problem).

    Args:
      outputs: (T, B, 1).
      y: (B,) real targets.
      mask: optional (B,) weights.
    """
    se = jnp.square(outputs[-1, :, 0] - y)
    return se.mean() if mask is None else jnp.sum(se * mask) / jnp.sum(mask)


def make_loss(kind: str, loss_at: str) -> Callable[..., Array]:
    """`loss(outputs, y, mask=None)` for a task kind ("tokens" or "regression").

    Raises:
      ValueError: for an unknown kind or loss_at, or loss_at="all" with a regression task.
    """
    if loss_at not in LOSS_AT:
        raise ValueError(f"probe.loss_at={loss_at!r} is unknown; allowed: {list(LOSS_AT)}")
    if kind == "tokens":
        return lambda o, y, mask=None: token_loss(o, y, loss_at, mask)
    if kind == "regression":
        if loss_at != "last":
            raise ValueError(f"probe.loss_at={loss_at!r}: a regression task is scored at the "
                             "last step only; allowed: ['last']")
        return regression_loss
    raise ValueError(f"loss kind {kind!r} is unknown; allowed: {list(LOSS_KINDS)}")


def truncation_scale(T: int, every: int | None, dtype=jnp.float32) -> Array | None:
    """(T,) gradient factors of truncated BPTT: 0 at steps t = k+1, 2k+1, ... (the gradient
    from step t does not reach the state of step t - 1 when t - 1 is a multiple of k), 1
    elsewhere. None (full BPTT) when `every` is None."""
    if every is None:
        return None
    i = jnp.arange(T)  # i = t - 1
    return jnp.where((i > 0) & (i % every == 0), 0, 1).astype(dtype)
