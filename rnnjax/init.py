"""Initializers for W_hh, and the full parameter initialization of one network.

Each initializer is a factory returning a pure function `init(key, shape, dtype) -> Array`, so
it can be vmapped over seeds.

W_xh and W_hq: with `normal`, every weight matrix is N(0, std^2), exactly d2l's scratch RNN;
with every other W_hh initializer they are Glorot normal, N(0, 2 / (fan_in + fan_out)).
Biases start at zero (as in d2l).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.cells import RNNParams

Initializer = Callable[[Array, tuple[int, ...], jnp.dtype], Array]

INITS = ("normal", "xavier", "orthogonal", "identity", "gaussian", "spectral")


def normal(std: float = 0.01) -> Initializer:
    """N(0, std^2) entries (d2l's scratch RNN uses std 0.01 for every weight matrix)."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def xavier() -> Initializer:
    """Glorot normal: N(0, 2 / (fan_in + fan_out)), untruncated (Glorot & Bengio 2010)."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def orthogonal(gain: float = 1.0) -> Initializer:
    """`gain` times a Haar-random orthogonal matrix (Saxe et al. 2014)."""
    return jax.nn.initializers.orthogonal(scale=gain)


def identity(gain: float = 1.0) -> Initializer:
    """`gain` times the identity: the IRNN of Le et al. (2015). The key is unused."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return gain * jnp.eye(*shape, dtype=dtype)

    return init


def gaussian(gain: float = 1.0) -> Initializer:
    """N(0, gain^2 / H) entries: the mean-field parameterization (Poole et al. 2016)."""

    def init(key, shape, dtype=jnp.float32):
        return gain / jnp.sqrt(shape[0]).astype(dtype) * jax.random.normal(key, shape, dtype)

    return init


def spectral(radius: float = 1.0) -> Initializer:
    """A Gaussian matrix rescaled so that its spectral radius (largest |eigenvalue|) is `radius`."""

    def init(key, shape, dtype=jnp.float32):
        w = jax.random.normal(key, shape, dtype) / jnp.sqrt(shape[0]).astype(dtype)
        rho = jnp.max(jnp.abs(jnp.linalg.eigvals(w)))
        return (radius / rho).astype(dtype) * w

    return init


# The value of each initializer parameter when it is not given (std: d2l's 0.01).
PARAM_DEFAULTS = {"std": 0.01, "gain": 1.0, "radius": 1.0}


def make_init(name: str, std: float | None = None, gain: float | None = None,
              radius: float | None = None) -> Initializer:
    """The W_hh initializer called `name`, with its one parameter (defaults where None)."""
    d = PARAM_DEFAULTS
    if name == "normal":
        return normal(d["std"] if std is None else std)
    if name == "xavier":
        return xavier()
    if name == "orthogonal":
        return orthogonal(d["gain"] if gain is None else gain)
    if name == "identity":
        return identity(d["gain"] if gain is None else gain)
    if name == "gaussian":
        return gaussian(d["gain"] if gain is None else gain)
    if name == "spectral":
        return spectral(d["radius"] if radius is None else radius)
    raise ValueError(f"init={name!r} is unknown; allowed: {list(INITS)}")


def init_params(
    key: Array, w_hh_init: Initializer, io_init: Initializer, D: int, H: int, Q: int,
    dtype=jnp.float32,
) -> RNNParams:
    """Initial parameters of one network.

    Args:
      key: a PRNG key.
      w_hh_init: initializer of W_hh.
      io_init: initializer of W_xh and W_hq.
      D: input size (vocabulary or channels). H: hidden size. Q: output size.
      dtype: parameter dtype.

    Returns:
      RNNParams with W_xh (D, H), W_hh (H, H), b_h (H,), W_hq (H, Q), b_q (Q,).
    """
    k_xh, k_hh, k_hq = jax.random.split(key, 3)
    return RNNParams(
        W_xh=io_init(k_xh, (D, H), dtype),
        W_hh=w_hh_init(k_hh, (H, H), dtype),
        b_h=jnp.zeros((H,), dtype),
        W_hq=io_init(k_hq, (H, Q), dtype),
        b_q=jnp.zeros((Q,), dtype),
    )
