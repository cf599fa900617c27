"""Initializers of recurrent weight matrices (the `init` config group).

Each initializer is a factory returning a pure function `init(key, shape, dtype) -> Array`, so
it can be vmapped over seeds. Which matrices a cell draws with them is the cell's business
(`rnnjax.core.cells`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

Initializer = Callable[[Array, tuple[int, ...], jnp.dtype], Array]


def normal(std: float = 0.01) -> Initializer:
    """N(0, std^2) entries (d2l's scratch RNN uses std 0.01 for every weight matrix)."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def xavier() -> Initializer:
    """Glorot normal: N(0, 2 / (fan_in + fan_out)), untruncated (Glorot & Bengio 2010)."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def xavier_uniform() -> Initializer:
    """Glorot uniform: U[-sqrt(6 / (fan_in + fan_out)), +], the same variance as `xavier`
    (Glorot & Bengio 2010; the weights of Arjovsky et al.'s RNN and LSTM)."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


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


# The one parameter each initializer takes (None: it takes none), and each parameter's default
# (std: d2l's 0.01). The config schema, its validation and the YAML files are checked against these.
INIT_PARAM = {
    "normal": "std",
    "xavier": None,
    "xavier_uniform": None,
    "orthogonal": "gain",
    "identity": "gain",
    "gaussian": "gain",
    "spectral": "radius",
}
PARAM_DEFAULTS = {"std": 0.01, "gain": 1.0, "radius": 1.0}
INITS = tuple(INIT_PARAM)


def param_value(name: str, value=None):
    """The value of init `name`'s parameter: `value`, or its default where None (None for an
    init that takes none)."""
    p = INIT_PARAM[name]
    return None if p is None else (PARAM_DEFAULTS[p] if value is None else value)


def make_init(name: str, value=None) -> Initializer:
    """The initializer called `name` with its one parameter `value` (its default where None).

    `value` may be a traced array: the initializers only multiply by it."""
    if name not in INIT_PARAM:
        raise ValueError(f"init={name!r} is unknown; allowed: {list(INITS)}")
    factory = {"normal": normal, "xavier": xavier, "xavier_uniform": xavier_uniform,
               "orthogonal": orthogonal,
               "identity": identity, "gaussian": gaussian, "spectral": spectral}[name]
    v = param_value(name, value)
    return factory() if v is None else factory(v)
