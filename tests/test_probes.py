import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params
from numpy_bptt import bptt

from rnnjax.cells import ACTIVATIONS, RNNParams
from rnnjax.init import gaussian, init_params, orthogonal, xavier
from rnnjax.probes import make_probe, make_time_grads, safe_norm, step_contribution_norms
from rnnjax.results import log10_slope

CASES = list(itertools.product(sorted(ACTIVATIONS), ["all", "last"]))


GAIN = {"tanh": 1.3, "sigmoid": 1.3, "relu": 1.1, "linear": 0.8}


def random_net(key, D=7, H=5, Q=7, gain=1.3, dtype=jnp.float64):
    """A random network with non-zero biases, scaled so gradients neither vanish nor explode."""
    k_p, k_b1, k_b2 = jax.random.split(key, 3)
    p = init_params(k_p, gaussian(gain), xavier(), D, H, Q, dtype)
    return p._replace(b_h=0.3 * jax.random.normal(k_b1, (H,), dtype),
                      b_q=0.3 * jax.random.normal(k_b2, (Q,), dtype))


def tokens(key, B, T, V):
    kx, ky = jax.random.split(key)
    return (jax.random.randint(kx, (B, T), 0, V, dtype=jnp.int32),
            jax.random.randint(ky, (B, T), 0, V, dtype=jnp.int32))


def as_numpy(p):
    return {k: np.asarray(v) for k, v in p._asdict().items()}


@pytest.mark.parametrize("act,loss_at", CASES)
@pytest.mark.parametrize("B,H", [(3, 5), (6, 4)])  # B <= H and B > H take different norm paths
def test_probe_matches_numpy_bptt(key, act, loss_at, B, H):
    k_net, k_tok = jax.random.split(key)
    T, V = 11, 7
    p = random_net(k_net, D=V, H=H, Q=V, gain=GAIN[act])
    x, y = tokens(k_tok, B, T, V)
    res = jax.jit(make_probe(act, loss_at))(p, x, y)
    loss, dH, dA, h_prev, _ = bptt(as_numpy(p), np.asarray(x), np.asarray(y), act, loss_at)
    want_g = np.sqrt((dH**2).sum(axis=(1, 2)))
    want_pg = np.array([np.linalg.norm(h_prev[t].T @ dA[t]) for t in range(T)])
    assert res.grad_norm.dtype == jnp.float64
    np.testing.assert_allclose(res.loss, loss, rtol=1e-10)
    np.testing.assert_allclose(res.grad_norm, want_g, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.param_grad_norm, want_pg, rtol=1e-8, atol=1e-14)
    # a comparison of all-zero gradients could not fail
    assert want_g[-1] > 0 and (want_g > 0).sum() >= T // 2
    if loss_at == "last":  # only the last step carries loss: the profile must vary
        assert want_g[0] != pytest.approx(want_g[-1], rel=1e-3)


@pytest.mark.parametrize("act,loss_at", CASES)
def test_step_contributions_sum_to_w_hh_gradient(key, act, loss_at):
    k_net, k_tok = jax.random.split(key)
    p = random_net(k_net)
    x, y = tokens(k_tok, 4, 9, 7)
    g = make_time_grads(act, loss_at)(p, x, y)
    h_prev = jnp.concatenate([jnp.zeros_like(g.hs[:1]), g.hs[:-1]])
    contributions = jnp.einsum("tbi,tbj->tij", h_prev, g.dL_dA)  # (T, H, H)

    def loss(W_hh):
        return make_time_grads(act, loss_at)(p._replace(W_hh=W_hh), x, y).loss

    np.testing.assert_allclose(contributions.sum(0), jax.grad(loss)(p.W_hh), rtol=1e-10,
                               atol=1e-14)
    norms = make_probe(act, loss_at)(p, x, y).param_grad_norm
    np.testing.assert_allclose(norms, jnp.linalg.norm(contributions, axis=(1, 2)), rtol=1e-10)


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.1])
def test_linear_orthogonal_slope_is_log_rho(key, rho):
    """Linear RNN, W_hh = rho * orthogonal, loss at the last step: dL/dH_t = dL/dH_T (W^T)^(T-t),
    so ||dL/dH_t|| = rho^(T-t) ||dL/dH_T|| exactly: log10 slope per step back = log10 rho."""
    T = 40
    p = init_params(key, orthogonal(rho), xavier(), 6, 16, 6, jnp.float64)
    x, y = tokens(jax.random.fold_in(key, 1), 4, T, 6)
    g = np.asarray(make_probe("linear", "last")(p, x, y).grad_norm)
    np.testing.assert_allclose(g, g[-1] * rho ** (T - np.arange(1, T + 1)), rtol=1e-9)
    assert log10_slope(g)[0] == pytest.approx(np.log10(rho), abs=1e-10)


def test_vmapped_seeds_equal_per_seed_loop(key):
    keys = jax.random.split(key, 5)
    ps = jax.vmap(lambda k: random_net(k, dtype=jnp.float32))(keys)
    x, y = jax.vmap(lambda k: tokens(k, 3, 8, 7))(jax.random.split(jax.random.fold_in(key, 9), 5))
    probe = make_probe("tanh", "all")
    batched = jax.jit(jax.vmap(probe))(ps, x, y)
    for s in range(5):
        one = probe(jax.tree.map(lambda a, s=s: a[s], ps), x[s], y[s])
        np.testing.assert_allclose(batched.grad_norm[s], one.grad_norm, rtol=1e-5)
        np.testing.assert_allclose(batched.param_grad_norm[s], one.param_grad_norm, rtol=1e-5)
        np.testing.assert_allclose(batched.loss[s], one.loss, rtol=1e-6)
    # different seeds are different networks
    assert not np.allclose(batched.grad_norm[0], batched.grad_norm[1])


def test_float32_computes_in_float32_and_agrees_with_float64(key):
    p64 = random_net(key)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    x, y = tokens(jax.random.fold_in(key, 2), 3, 10, 7)
    r32 = jax.jit(make_probe("sigmoid", "last"))(p32, x, y)
    r64 = jax.jit(make_probe("sigmoid", "last"))(p64, x, y)
    assert r32.grad_norm.dtype == jnp.float32 and r64.grad_norm.dtype == jnp.float64
    np.testing.assert_allclose(r32.grad_norm, r64.grad_norm, rtol=1e-4)
    assert not np.array_equal(np.asarray(r32.grad_norm, np.float64), np.asarray(r64.grad_norm))


def test_safe_norm_survives_float32_underflow_and_overflow():
    for scale in (1e-30, 1e25):
        v = jnp.full((3, 4), scale, jnp.float32)
        assert float(safe_norm(v[None], axes=(1, 2))[0]) == pytest.approx(scale * np.sqrt(12),
                                                                          rel=1e-5)
        naive = jnp.sqrt(jnp.sum(v**2))
        assert naive == 0 or not np.isfinite(naive)  # what the scaling avoids
    assert float(safe_norm(jnp.zeros((1, 2, 2), jnp.float32), axes=(1, 2))[0]) == 0.0


def test_contribution_norms_both_paths_agree(key):
    kh, kd = jax.random.split(key)
    for B, H in [(2, 5), (7, 3)]:
        h = jax.random.normal(kh, (4, B, H))
        d = 1e-30 * jax.random.normal(kd, (4, B, H))
        want = np.linalg.norm(np.einsum("tbi,tbj->tij", np.asarray(h), np.asarray(d) * 1e30),
                              axis=(1, 2)) * 1e-30
        np.testing.assert_allclose(step_contribution_norms(h, d), want, rtol=1e-10)


def test_compiled_program_does_not_grow_with_seq_len(key):
    """The scan body is traced once: the jaxpr has the same number of equations for any T."""
    p = random_net(key)
    probe = make_probe("tanh", "all")

    def count(jaxpr):
        subs = [count(j.jaxpr if hasattr(j, "jaxpr") else j)
                for e in jaxpr.eqns for j in jaxprs_in_params(e.params)]
        return len(jaxpr.eqns) + sum(subs)

    def size(T):
        x = jnp.zeros((2, T), jnp.int32)
        return count(jax.make_jaxpr(probe)(p, x, x).jaxpr)

    assert size(4) == size(512) > 20


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="allowed"):
        make_probe("softsign", "all")
    with pytest.raises(ValueError, match="allowed"):
        make_probe("tanh", "first")
    assert isinstance(RNNParams._fields, tuple)


def test_safe_norm_near_the_float32_limits():
    # Above ~1e38 the reciprocal of the scale is subnormal (flushed to zero by XLA on a CPU);
    # below ~1e-19 squares underflow. The norm must stay exact in both ranges, and overflow to
    # inf only when the norm itself is beyond float32.
    norm = jax.jit(safe_norm, static_argnums=1)
    base = np.array([[1.0, 0.5], [0.25, 0.0]])
    for scale in (2e38, 1e30, 1e-20, 1e-36):
        x = jnp.asarray(base * scale, jnp.float32)
        want = np.linalg.norm(base) * scale
        np.testing.assert_allclose(float(norm(x, (0, 1))), want, rtol=1e-6)
    assert np.isposinf(norm(jnp.full((2, 2), 3e38, jnp.float32), (0, 1)))
    assert norm(jnp.zeros((2, 2), jnp.float32), (0, 1)) == 0
