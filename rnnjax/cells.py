"""The vanilla RNN of d2l's RNN chapter, in row-vector form, with BPTT through `lax.scan`.

    A_t = X_t W_xh + H_{t-1} W_hh + b_h,   H_t = phi(A_t),   O_t = H_t W_hq + b_q,   H_0 = 0.

Token inputs are one-hot rows (X_t W_xh is the row of W_xh picked by the token); real-valued
inputs (B, T, D), as in the adding problem, are used as they are.
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


# phi'(A) as a function of H = phi(A), for the probe's backward scan, which keeps H_t only.
# (relu: jax.nn.relu's derivative at 0 is 0, and H = 0 there.)
DERIVATIVES_FROM_OUTPUT: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda h: 1 - jnp.square(h),
    "sigmoid": lambda h: h * (1 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
    "linear": jnp.ones_like,
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


def rnn_cell(W_hh: Array, phi: Callable[[Array], Array], h: Array, drive: Array) -> Array:
    """One step of one batch: H_t = phi(drive_t + H_{t-1} W_hh).

    Args:
      W_hh: (H, H).
      phi: the activation.
      h: (B, H) previous hidden state H_{t-1}.
      drive: (B, H) the rest of A_t: X_t W_xh + b_h (plus the probe's perturbation of A_t).

    Returns:
      H_t, (B, H).
    """
    return phi(drive + h @ W_hh)


def scale_grad(h: Array, s: Array) -> Array:
    """Returns h unchanged, with the gradient flowing back through it multiplied by s.

    s = 0 is d2l's `detach` (truncated BPTT); s in {0, 1/pi} is randomized truncation.
    """
    h_const = jax.lax.stop_gradient(h)
    return h_const + s * (h - h_const)


def step_drive(W_xh: Array, x_t: Array) -> Array:
    """X_t W_xh for one step: (B, H). x_t is (B,) tokens or (B, D) real inputs."""
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        # A row gather equals the one-hot product; on a CPU it is also ~2x faster end to end.
        return W_xh[x_t]
    return x_t.astype(W_xh.dtype) @ W_xh


def input_drive(W_xh: Array, x: Array) -> Array:
    """X_t W_xh for every step: (T, B, H). x is (B, T) tokens or (B, T, D) real inputs."""
    return jax.vmap(step_drive, in_axes=(None, 1))(W_xh, x)


def forward(
    params: RNNParams,
    x: Array,
    phi: Callable[[Array], Array],
    dH: Array | None = None,
    dA: Array | None = None,
    grad_scale: Array | None = None,
) -> tuple[Array, Array]:
    """Runs the RNN over a batch of token sequences with `lax.scan`.

    `dH` and `dA` are additive perturbations of H_t and A_t inside the recurrence (zeros in
    use): differentiating the loss with respect to them gives the TOTAL derivatives dL/dH_t and
    dL/dA_t, through every later step, in a single backward pass.

    Args:
      params: one network.
      x: (B, T) integer tokens or (B, T, D) real-valued inputs.
      phi: the activation.
      dH: optional (T, B, H) perturbation added to H_t.
      dA: optional (T, B, H) perturbation added to A_t.
      grad_scale: optional (T,) factor on the gradient flowing from step t back into H_{t-1}
        (truncated or randomized BPTT); None is full BPTT.

    Returns:
      hs: (T, B, H) hidden states H_1..H_T.
      logits: (T, B, Q) outputs O_1..O_T.
    """
    B, T = x.shape[:2]
    # Everything in A_t that does not depend on H_{t-1} is computed for all steps at once.
    drive = input_drive(params.W_xh, x) + params.b_h  # (T, B, H)
    if dA is not None:
        drive = drive + dA  # adding to A_t before or inside the scan is the same function
    xs = {"drive": drive}
    if dH is not None:
        xs["dH"] = dH
    if grad_scale is not None:
        xs["scale"] = grad_scale

    def step(h, inputs):
        if "scale" in inputs:
            h = scale_grad(h, inputs["scale"])
        h = rnn_cell(params.W_hh, phi, h, inputs["drive"])
        if "dH" in inputs:
            h = h + inputs["dH"]
        return h, h

    h0 = jnp.zeros((B, params.W_hh.shape[0]), params.W_hh.dtype)
    _, hs = jax.lax.scan(step, h0, xs)  # (T, B, H)
    logits = hs @ params.W_hq + params.b_q  # (T, B, Q): one matmul outside the scan
    return hs, logits
