import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.core.cells.vanilla import init_params
from rnnjax.core.init import INITS, make_init, normal, xavier


def sample(name, key, H=256, value=None):
    return np.asarray(make_init(name, value)(key, (H, H), jnp.float64))


def test_orthogonal_is_gain_times_orthogonal(key):
    W = sample("orthogonal", key, H=64, value=0.7)
    np.testing.assert_allclose(W @ W.T, 0.49 * np.eye(64), atol=1e-10)


def test_identity_is_gain_times_identity(key):
    np.testing.assert_array_equal(sample("identity", key, H=8, value=1.5), 1.5 * np.eye(8))


@pytest.mark.parametrize("radius", [0.5, 1.0, 3.0])
def test_spectral_radius_is_exact(key, radius):
    W = sample("spectral", key, H=64, value=radius)
    assert np.max(np.abs(np.linalg.eigvals(W))) == pytest.approx(radius, rel=1e-9)


@pytest.mark.parametrize("name,value,var", [
    ("normal", 0.01, 1e-4),
    ("normal", 0.2, 0.04),
    ("xavier", None, 1 / 256),  # 2 / (fan_in + fan_out) with fan_in = fan_out = H
    ("xavier_uniform", None, 1 / 256),  # U[-sqrt(3 / H), +]: the same variance
    ("gaussian", 1.5, 1.5**2 / 256),
])
def test_entry_variance(key, name, value, var):
    W = sample(name, key, value=value)
    # 65536 entries: the sample variance is within ~1% (5 sigma) of the truth
    assert W.mean() == pytest.approx(0, abs=5 * np.sqrt(var / W.size))
    assert W.var() == pytest.approx(var, rel=0.03)


def test_every_init_is_a_pure_function_of_the_key(key):
    for name in INITS:
        a, b = sample(name, key, H=16), sample(name, key, H=16)
        np.testing.assert_array_equal(a, b)
        if name != "identity":
            assert not np.array_equal(a, sample(name, jax.random.fold_in(key, 1), H=16))


def test_init_params_shapes_and_zero_biases(key):
    p = init_params(key, make_init("orthogonal"), xavier(), 28, 16, 30, jnp.float32)
    assert p.W_xh.shape == (28, 16) and p.W_hh.shape == (16, 16) and p.W_hq.shape == (16, 30)
    assert p.b_h.shape == (16,) and p.b_q.shape == (30,)
    assert all(a.dtype == jnp.float32 for a in p)
    assert not p.b_h.any() and not p.b_q.any()
    d2l = init_params(key, normal(0.01), normal(0.01), 28, 512, 28, jnp.float64)
    for W in (d2l.W_xh, d2l.W_hh, d2l.W_hq):  # d2l: every weight matrix N(0, 0.01^2)
        assert float(jnp.std(W)) == pytest.approx(0.01, rel=0.05)


def test_unknown_init_raises():
    with pytest.raises(ValueError, match="allowed"):
        make_init("he")


def test_xavier_uniform_is_glorots_uniform_bound(key):
    W = np.asarray(make_init("xavier_uniform")(key, (64, 192), jnp.float64))
    bound = np.sqrt(6 / (64 + 192))
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound  # 12288 draws
    # uniform, not normal: the fourth moment over the squared variance is 9/5 (normal: 3)
    assert np.mean(W**4) / np.mean(W**2) ** 2 == pytest.approx(1.8, rel=0.05)
