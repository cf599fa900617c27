"""Losses and truncation factors, against numpy written out by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.core.losses import make_loss, regression_loss, token_loss, truncation_scale


def np_ce(logits, labels):
    """Softmax cross-entropy per row, float64 numpy."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    T, B, Q = 5, 3, 4
    return rng.normal(size=(T, B, Q)), rng.integers(0, Q, (B, T)), rng.random(B)


def test_token_loss_all_last_and_mask(batch):
    logits, y, mask = batch
    ce = np_ce(logits, y.T)  # (T, B)
    assert float(token_loss(jnp.asarray(logits), jnp.asarray(y), "all")) == pytest.approx(
        ce.mean(), rel=1e-12)
    assert float(token_loss(jnp.asarray(logits), jnp.asarray(y), "last")) == pytest.approx(
        ce[-1].mean(), rel=1e-12)
    want = (ce.mean(0) * mask).sum() / mask.sum()
    assert float(token_loss(jnp.asarray(logits), jnp.asarray(y), "all", jnp.asarray(mask))
                 ) == pytest.approx(want, rel=1e-12)


def test_regression_loss_is_the_last_steps_squared_error(batch):
    outputs, _, mask = batch
    y = np.array([0.5, -1.0, 2.0])
    se = (outputs[-1, :, 0] - y) ** 2
    assert float(regression_loss(jnp.asarray(outputs[..., :1]), jnp.asarray(y))) == \
        pytest.approx(se.mean(), rel=1e-12)
    assert float(regression_loss(jnp.asarray(outputs[..., :1]), jnp.asarray(y),
                                 jnp.asarray(mask))) == pytest.approx(
        (se * mask).sum() / mask.sum(), rel=1e-12)


def test_make_loss_refuses_what_does_not_exist():
    with pytest.raises(ValueError, match="allowed"):
        make_loss("tokens", "first")
    with pytest.raises(ValueError, match="regression task is scored at the last step"):
        make_loss("regression", "all")
    with pytest.raises(ValueError, match="allowed"):
        make_loss("images", "last")


@pytest.mark.parametrize("k", [1, 3, 4])
def test_truncation_cuts_every_k_steps(k):
    s = np.asarray(truncation_scale(10, k))
    # the gradient from step t (1-based) does not reach step t - 1 when t - 1 is a multiple of k
    want = [0.0 if i > 0 and i % k == 0 else 1.0 for i in range(10)]
    np.testing.assert_array_equal(s, want)
    assert truncation_scale(10, None) is None
