"""The vanilla RNN of d2l's RNN chapter, in row-vector form, with BPTT through `lax.scan`.

    A_t = X_t W_xh + H_{t-1} W_hh + b_h,   H_t = phi(A_t),   O_t = H_t W_hq + b_q,   H_0 = 0.

Token inputs are one-hot rows, so `X_t W_xh` is the row of `W_xh` picked by the token: the
forward pass gathers rows instead of multiplying by a one-hot matrix (the same numbers, without
a (T, B, V) tensor).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "linear": lambda a: a,  # identity: the analytic control
}


class RNNParams(NamedTuple):
    """Parameters of one network (a leading seed axis S is added by `vmap`)."""

    W_xh: Array  # (D, H) input-to-hidden, one row per token
    W_hh: Array  # (H, H) hidden-to-hidden
    b_h: Array  # (H,)
    W_hq: Array  # (H, Q) hidden-to-output
    b_q: Array  # (Q,)


def activation(name: str) -> Callable[[Array], Array]:
    """The elementwise nonlinearity `phi` called `name` (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        allowed = sorted(ACTIVATIONS)
        raise ValueError(f"activation={name!r} is unknown; allowed: {allowed}") from None


def rnn_cell(
    params: RNNParams, phi: Callable[[Array], Array], h: Array, xw: Array, dA: Array, dH: Array
) -> Array:
    """One step of one batch: H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h + dA_t) + dH_t.

    Args:
      params: one network.
      phi: the activation.
      h: (B, H) previous hidden state H_{t-1}.
      xw: (B, H) input drive X_t W_xh.
      dA: (B, H) additive perturbation of A_t (zeros in use).
      dH: (B, H) additive perturbation of H_t (zeros in use).

    Returns:
      H_t, (B, H).
    """
    return phi(xw + h @ params.W_hh + params.b_h + dA) + dH


def forward(
    params: RNNParams,
    x: Array,
    phi: Callable[[Array], Array],
    dH: Array | None = None,
    dA: Array | None = None,
) -> tuple[Array, Array]:
    """Runs the RNN over a batch of token sequences with `lax.scan`.

    `dH` and `dA` are additive perturbations of H_t and A_t inside the recurrence (zeros in
    use): differentiating the loss with respect to them gives the TOTAL derivatives dL/dH_t and
    dL/dA_t, through every later step, in a single backward pass.

    Args:
      params: one network.
      x: (B, T) integer tokens.
      phi: the activation.
      dH: optional (T, B, H) perturbation added to H_t.
      dA: optional (T, B, H) perturbation added to A_t.

    Returns:
      hs: (T, B, H) hidden states H_1..H_T.
      logits: (T, B, Q) outputs O_1..O_T.
    """
    B, T = x.shape
    H = params.W_hh.shape[0]
    zeros = jnp.zeros((T, B, H), params.W_hh.dtype)
    dH = zeros if dH is None else dH
    dA = zeros if dA is None else dA
    xw = params.W_xh[x.T]  # (T, B, H): one-hot rows times W_xh, as a gather

    def step(h, inputs):
        h = rnn_cell(params, phi, h, *inputs)
        return h, h

    h0 = jnp.zeros((B, H), params.W_hh.dtype)
    _, hs = jax.lax.scan(step, h0, (xw, dA, dH))  # (T, B, H)
    logits = hs @ params.W_hq + params.b_q  # (T, B, Q): one matmul outside the scan
    return hs, logits
