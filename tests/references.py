"""Reference computations for the vanilla RNN that the tests hold the harness to. They share no
code with rnnjax's probe: plain autodiff through perturbations inside a scan (JAX), and brute
force float64 numpy loops."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PHI = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "linear": lambda a: a}
NP_PHI = {
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), lambda a: np.exp(-a) / (1 + np.exp(-a)) ** 2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
    "linear": (lambda a: a, np.ones_like),
}


class TimeGrads(NamedTuple):
    loss: jax.Array  # ()
    hs: jax.Array  # (T, B, H) H_1..H_T
    dL_dH: jax.Array  # (T, B, H) total dL/dH_t
    dL_dA: jax.Array  # (T, B, H) total dL/dA_t


def _drive(W_xh, x):
    """X_t W_xh for every step, (T, B, H), by the one-hot product."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.einsum("btd,dh->tbh", jax.nn.one_hot(x, W_xh.shape[0], dtype=W_xh.dtype), W_xh)
    return jnp.einsum("btd,dh->tbh", x.astype(W_xh.dtype), W_xh)


def make_time_grads(activation, loss_at, kind="tokens", truncate=None):
    """`time_grads(params, x, y) -> TimeGrads`: the total derivatives dL/dH_t and dL/dA_t as
    gradients with respect to zero perturbations of H_t and A_t added inside the scan (one
    backward pass of plain autodiff through the whole sequence)."""
    phi = PHI[activation]

    def loss_fn(dH, dA, p, x, y):
        T = x.shape[1]
        if truncate is None:
            scale = jnp.ones((T,), p.W_hh.dtype)
        else:
            i = jnp.arange(T)
            scale = jnp.where((i > 0) & (i % truncate == 0), 0, 1).astype(p.W_hh.dtype)

        def step(h, inp):
            d, eh, ea, s = inp
            h = jax.lax.stop_gradient(h) + s * (h - jax.lax.stop_gradient(h))
            h = phi(d + ea + h @ p.W_hh) + eh
            return h, h

        h0 = jnp.zeros((x.shape[0], p.W_hh.shape[0]), p.W_hh.dtype)
        _, hs = jax.lax.scan(step, h0, (_drive(p.W_xh, x) + p.b_h, dH, dA, scale))
        o = hs @ p.W_hq + p.b_q
        if kind == "regression":
            value = jnp.mean(jnp.square(o[-1, :, 0] - y))
        elif loss_at == "all":
            value = optax.softmax_cross_entropy_with_integer_labels(o, y.T).mean()
        else:
            value = optax.softmax_cross_entropy_with_integer_labels(o[-1], y[:, -1]).mean()
        return value, hs

    def time_grads(p, x, y):
        B, T = x.shape[:2]
        zeros = jnp.zeros((T, B, p.W_hh.shape[0]), p.W_hh.dtype)
        (value, hs), (dH, dA) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            zeros, zeros, p, x, y)
        return TimeGrads(value, hs, dH, dA)

    return jax.jit(time_grads)  # one program, not one per operation (the same numbers)


def linear_profile(W_hh, dL_dH_T, T):
    """Exact ||dL/dH_t|| of a LINEAR RNN whose loss is at the last step: ||dL/dH_T (W^T)^(T-t)||,
    (T,) for t = 1..T in float64."""
    W = np.asarray(W_hh, np.float64)
    g = np.asarray(dL_dH_T, np.float64)
    out = np.empty(T)
    for k in range(T):
        out[T - 1 - k] = np.linalg.norm(g)
        g = g @ W.T
    return out


def jacobian_product_singular_values(params, x, activation, t):
    """Singular values of dH_T/dH_t for ONE token sequence x (T,), brute force in float64: the
    (H, H) product of T - t Jacobians diag(phi'(A_s)) W_hh^T."""
    p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    phi, dphi = NP_PHI[activation]
    h = np.zeros(p["W_hh"].shape[0])
    P = np.eye(len(h))
    for s, tok in enumerate(np.asarray(x), start=1):
        a = p["W_xh"][tok] + p["b_h"] + h @ p["W_hh"]
        h = phi(a)
        if s > t:
            P = (dphi(a)[:, None] * p["W_hh"].T) @ P
    return np.linalg.svd(P, compute_uv=False)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def tokens(key, B, T, V):
    """Random (B, T) input tokens and targets in [0, V) (one program per size, not eager
    operations)."""
    kx, ky = jax.random.split(key)
    return (jax.random.randint(kx, (B, T), 0, V, dtype=jnp.int32),
            jax.random.randint(ky, (B, T), 0, V, dtype=jnp.int32))
