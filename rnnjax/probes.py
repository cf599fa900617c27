"""Per-timestep gradient probes: ||dL/dH_t|| and the step-t contribution to dL/dW_hh.

Everything here is pure and jit-safe; `jax.jit(jax.vmap(probe))` is applied where a job runs.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from rnnjax.cells import (
    DERIVATIVES_FROM_OUTPUT,
    RNNParams,
    activation,
    forward,
    rnn_cell,
    step_drive,
)

LOSS_AT = ("all", "last")


class ProbeResult(NamedTuple):
    """What one probe call returns for one network (a leading seed axis S under `vmap`)."""

    loss: Array  # () batch-mean loss L
    grad_norm: Array  # (T,) ||dL/dH_t||_F over the batch, total derivative, t = 1..T
    param_grad_norm: Array  # (T,) ||H_{t-1}^T dL/dA_t||_F, step t's share of dL/dW_hh


class TimeGrads(NamedTuple):
    """Total derivatives along the time axis, from one backward pass."""

    loss: Array  # ()
    hs: Array  # (T, B, H) H_1..H_T
    dL_dH: Array  # (T, B, H) dL/dH_t
    dL_dA: Array  # (T, B, H) dL/dA_t = dL/dH_t * phi'(A_t)


LOSS_KINDS = ("tokens", "regression")


def token_loss(logits: Array, y: Array, loss_at: str, mask: Array | None = None) -> Array:
    """Batch-mean softmax cross-entropy, over all steps or at the last step only.

    Args:
      logits: (T, B, Q).
      y: (B, T) integer targets.
      loss_at: "all" (mean over every step and sequence) or "last" (mean over sequences at T).
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
    """`loss(outputs, y, mask=None)` for a task kind ("tokens" or "regression")."""
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
    from step t does not reach H_{t-1} when t - 1 is a multiple of k), 1 elsewhere.
    None (full BPTT) when `every` is None."""
    if every is None:
        return None
    i = jnp.arange(T)  # i = t - 1
    return jnp.where((i > 0) & (i % every == 0), 0, 1).astype(dtype)


def make_time_grads(
    activation_name: str, loss_at: str, kind: str = "tokens", truncate: int | None = None
) -> Callable[[RNNParams, Array, Array], TimeGrads]:
    """Builds `time_grads(params, x, y) -> TimeGrads` for one network and one batch.

    Args:
      activation_name: one of `rnnjax.cells.ACTIVATIONS`.
      loss_at: "all" or "last".
      kind: "tokens" (softmax cross-entropy) or "regression" (squared error).
      truncate: None for full BPTT; k to stop the gradient every k steps.
    """
    phi = activation(activation_name)
    loss = make_loss(kind, loss_at)

    def loss_fn(dH, dA, params, x, y):
        scale = truncation_scale(x.shape[1], truncate, params.W_hh.dtype)
        hs, outputs = forward(params, x, phi, dH=dH, dA=dA, grad_scale=scale)
        return loss(outputs, y), hs

    def time_grads(params: RNNParams, x: Array, y: Array) -> TimeGrads:
        B, T = x.shape[:2]
        zeros = jnp.zeros((T, B, params.W_hh.shape[0]), params.W_hh.dtype)
        # Gradients with respect to zero perturbations of H_t and A_t are the total
        # derivatives dL/dH_t and dL/dA_t: one backward pass gives all T of them.
        (loss, hs), (dL_dH, dL_dA) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            zeros, zeros, params, x, y
        )
        return TimeGrads(loss, hs, dL_dH, dL_dA)

    return time_grads


def safe_norm(x: Array, axes: tuple[int, ...]) -> Array:
    """Frobenius norm over `axes`, scaled by the largest entry first.

    Why: in float32, squaring an entry below ~1e-19 underflows to zero and one above ~1e19
    overflows, so a plain sqrt(sum(x^2)) reports 0 or inf for gradients that float32 still holds.
    """
    m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    return jnp.squeeze(m, axes) * jnp.sqrt(jnp.sum(jnp.square(_unit(x, m)), axis=axes))


def _unit(x: Array, m: Array) -> Array:
    """x / m for m = max |x| (broadcast), as two divisions by sqrt(m).

    Why: XLA may divide by multiplying with 1/m, and for m above ~1e38 in float32 that
    reciprocal is subnormal, which XLA on a CPU flushes to zero: the norm would read 0.
    """
    r = jnp.sqrt(jnp.where(m > 0, m, 1).astype(x.dtype))
    return x / r / r


def step_contribution_norms(h_prev: Array, dL_dA: Array) -> Array:
    """||H_{t-1}^T dL/dA_t||_F for every t, without forming the (T, H, H) contributions.

    When B <= H it uses ||H^T D||_F^2 = <H H^T, D D^T>_F, which costs B^2 H per step instead
    of B H^2 and memory (T, B, B) instead of (T, H, H). Both factors are rescaled by their
    largest entry first, for the same underflow reason as `safe_norm`.

    Args:
      h_prev: (T, B, H) H_0..H_{T-1}.
      dL_dA: (T, B, H).

    Returns:
      (T,) norms.
    """
    mh = jnp.max(jnp.abs(h_prev), axis=(1, 2))  # (T,)
    md = jnp.max(jnp.abs(dL_dA), axis=(1, 2))
    hn = _unit(h_prev, mh[:, None, None])
    dn = _unit(dL_dA, md[:, None, None])
    B, H = h_prev.shape[1:]
    if B > H:  # shapes are static: form the (T, H, H) contributions when they are the smaller
        return mh * md * jnp.sqrt(jnp.sum(jnp.square(jnp.einsum("tbi,tbj->tij", hn, dn)), (1, 2)))
    gram_h = jnp.einsum("tbi,tci->tbc", hn, hn)  # (T, B, B)
    gram_d = jnp.einsum("tbi,tci->tbc", dn, dn)
    # The inner product of two PSD matrices is >= 0; clip rounding below zero.
    sq = jnp.maximum(jnp.sum(gram_h * gram_d, axis=(1, 2)), 0)
    return mh * md * jnp.sqrt(sq)


def make_step_loss(kind: str, loss_at: str, T: int) -> Callable[..., Array]:
    """`step_loss(o_t, y, t) -> l_t` with L = sum_t l_t: step t's share of the loss.

    Args:
      kind, loss_at: as `make_loss`.
      T: the sequence length.

    Returns:
      A function of the step's outputs o_t (B, Q), the targets (y (B, T) tokens, or (B,) real
      values for a regression task) and the 0-based step t.
    """
    loss = make_loss(kind, loss_at)
    if kind == "tokens":
        weight = (lambda t: 1 / T) if loss_at == "all" else (lambda t: t == T - 1)
        # A one-step sequence: its "all" loss is the batch-mean cross-entropy at that step.
        step = make_loss(kind, "all")
        return lambda o, y, t: weight(t) * step(o[None], jax.lax.dynamic_slice_in_dim(y, t, 1,
                                                                                         1))
    return lambda o, y, t: (t == T - 1) * loss(o[None], y)


def make_probe(
    activation_name: str, loss_at: str, kind: str = "tokens", truncate: int | None = None
) -> Callable[[RNNParams, Array, Array], ProbeResult]:
    """Builds `probe(params, x, y) -> ProbeResult` for one network and one batch.

    One forward scan keeps H_1..H_T (the only trajectory-sized array); one backward scan runs
    BPTT by hand from t = T down to 1, with autodiff for each step's loss term:

        dL/dH_t = dl_t/dH_t + s_{t+1} dL/dA_{t+1} W_hh^T,   dL/dA_t = dL/dH_t * phi'(A_t),

    and emits the two norms of each step, so memory stays near one trajectory (T, B, H)
    however long T is. `make_time_grads` computes the same by autodiff through perturbations
    (the tests hold the two together).

    A float overflow in the backward chain is reported as inf from the step it happened back
    to t = 1 (the chain cannot be continued there) rather than the NaN that inf * 0 gives;
    NaN means the forward pass itself was not finite.

    Args: as `make_time_grads`.

    Returns:
      A pure function of (params, x (B, T) int or (B, T, D) float, y); vmap it over seeds and
      jit it at the call site.
    """
    phi = activation(activation_name)
    dphi = DERIVATIVES_FROM_OUTPUT[activation_name]
    make_loss(kind, loss_at)  # checks kind and loss_at now, not at trace time

    def probe(params: RNNParams, x: Array, y: Array) -> ProbeResult:
        B, T = x.shape[:2]
        xs = jnp.swapaxes(x, 0, 1)  # (T, B) or (T, B, D)

        def forward_step(carry, x_t):
            h, finite = carry
            h = rnn_cell(params.W_hh, phi, h, step_drive(params.W_xh, x_t) + params.b_h)
            return (h, finite & jnp.all(jnp.isfinite(h))), h

        h0 = jnp.zeros((B, params.W_hh.shape[0]), params.W_hh.dtype)
        (_, finite), hs = jax.lax.scan(forward_step, (h0, jnp.ones((), bool)), xs)  # (T, B, H)

        step_loss = make_step_loss(kind, loss_at, T)
        scale = truncation_scale(T, truncate, params.W_hh.dtype)

        def local_loss(h, t):
            return step_loss(h @ params.W_hq + params.b_q, y, t).astype(h.dtype)

        def backward_step(carry, t):
            from_later, overflowed, loss = carry  # from_later: s_{t+1} dL/dA_{t+1} W_hh^T
            h = hs[t]
            h_prev = jnp.where(t > 0, hs[jnp.maximum(t - 1, 0)], 0)
            l_t, local = jax.value_and_grad(local_loss)(h, t)
            dH = local + from_later  # (B, H)
            dA = dH * dphi(h)
            overflowed = overflowed | ~jnp.all(jnp.isfinite(dH))
            to_earlier = dA @ params.W_hh.T
            if scale is not None:
                to_earlier = scale[t] * to_earlier
            norms = (safe_norm(dH, (0, 1)), step_contribution_norms(h_prev[None], dA[None])[0])
            return (to_earlier, overflowed, loss + l_t), (norms, overflowed)

        init = (jnp.zeros_like(h0), jnp.zeros((), bool), jnp.zeros((), h0.dtype))
        (_, _, loss), ((g, pg), overflowed) = jax.lax.scan(
            backward_step, init, jnp.arange(T), reverse=True)
        # With a finite forward pass, a non-finite gradient can only come from an overflow.
        overflow = overflowed & jnp.isfinite(loss) & finite
        return ProbeResult(loss=loss, grad_norm=jnp.where(overflow, jnp.inf, g),
                           param_grad_norm=jnp.where(overflow, jnp.inf, pg))

    return probe
