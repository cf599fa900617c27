import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import jacobian_product_singular_values, linear_profile, make_time_grads

from rnnjax.app.results import log10_slope
from rnnjax.core.cells import ACTIVATIONS, vanilla
from rnnjax.core.cells.vanilla import init_params, input_drive_variance, pascanu_log10_bound
from rnnjax.core.init import gaussian, orthogonal, spectral, xavier
from rnnjax.core.probes import make_probe
from rnnjax.core.tasks import make_random_batch
from rnnjax.core.theory import (
    effective_gain,
    gauss_expect,
    make_lyapunov,
    mean_field,
    mean_field_q,
)


def test_gauss_expect_against_closed_forms_and_monte_carlo():
    assert gauss_expect(lambda h: h**2, 2.5) == pytest.approx(2.5, rel=1e-12)
    assert gauss_expect(lambda h: h**4, 0.7) == pytest.approx(3 * 0.49, rel=1e-12)
    assert gauss_expect(lambda h: (h > 0) * 1.0, 1.3) == pytest.approx(0.5, abs=1e-12)
    z = np.random.default_rng(0).normal(0, math.sqrt(0.8), 2_000_000)
    for f in (lambda h: np.tanh(h) ** 2, lambda h: (1 - np.tanh(h) ** 2) ** 2,
              lambda h: 1 / (1 + np.exp(-h))):
        mc = f(z)
        assert gauss_expect(f, 0.8) == pytest.approx(mc.mean(), abs=4 * mc.std() / 1414)


@pytest.mark.parametrize("g", [0.5, 0.9, 1.3, 2.0])
def test_landmarks(g):
    assert mean_field("linear", g, input_var=0.3)["chi1"] == pytest.approx(g**2, rel=1e-12)
    assert mean_field("relu", g, input_var=0.3)["chi1"] == pytest.approx(g**2 / 2, rel=1e-9)
    assert mean_field("sigmoid", g, input_var=0.3)["chi1"] <= g**2 / 16
    if g <= 1:  # tanh, no input, no bias: q* = 0 and chi_1 = g^2
        mf = mean_field("tanh", g)
        assert mf["q_star"] < 1e-6 and mf["chi1"] == pytest.approx(g**2, rel=1e-4)
    assert mean_field("relu", math.sqrt(2), input_var=0.1)["chi1"] == pytest.approx(1, rel=1e-9)


@pytest.mark.parametrize("name,g,v,b", [("tanh", 1.5, 0.2, 0.05), ("sigmoid", 3.0, 0.3, 0.0),
                                        ("relu", 1.0, 0.2, 0.0)])
def test_q_star_is_a_fixed_point_and_matches_a_wide_network(name, g, v, b):
    q = mean_field_q(name, g, v, b)
    phi = {"tanh": np.tanh, "sigmoid": lambda h: 1 / (1 + np.exp(-h)),
           "relu": lambda h: np.maximum(h, 0)}[name]
    assert q == pytest.approx(g**2 * gauss_expect(lambda h: phi(h) ** 2, q) + v + b, rel=1e-10)
    # brute force: a wide random network driven by Gaussian input of variance v
    rng = np.random.default_rng(1)
    H = 3000
    W = rng.normal(0, g / math.sqrt(H), (H, H))
    bias = rng.normal(0, math.sqrt(b), H) if b else np.zeros(H)
    h = np.zeros(H)
    qs = []
    for t in range(60):
        a = h @ W + rng.normal(0, math.sqrt(v), H) + bias
        h = phi(a)
        if t >= 30:
            qs.append(np.mean(a**2))
    assert np.mean(qs) == pytest.approx(q, rel=0.05)


def test_depth_scale_and_factor():
    mf = mean_field("linear", 0.5)
    assert mf["log10_factor_per_step"] == pytest.approx(math.log10(0.5), rel=1e-12)
    assert mf["depth_scale"] == pytest.approx(-1 / math.log(0.25), rel=1e-12)
    assert math.isinf(mean_field("relu", math.sqrt(2), 0.1)["depth_scale"]) or abs(
        mean_field("relu", math.sqrt(2), 0.1)["depth_scale"]) > 1e8


@functools.partial(jax.jit, static_argnames=("act", "H", "dtype"))
def rand_net(key, act, H=12, gain=1.3, dtype=jnp.float64):
    init = gaussian(gain)
    return init_params(key, init, xavier(), 5, H, 5, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_batch(key, V, B, T):
    """make_random_batch(V, B, T)(key), jitted (one program, not eager operations)."""
    return make_random_batch(V, B, T)(key)


@functools.partial(jax.jit, static_argnames=("w_hh_init", "H", "V", "S", "dtype"))
def nets(key, gain, w_hh_init=gaussian, H=16, V=28, S=None, dtype=jnp.float64):
    """init_params(key, w_hh_init(gain), xavier(), V, H, V) (S of them for S keys), jitted
    with the gain traced: one program for every gain."""
    def one(k):
        return init_params(k, w_hh_init(gain), xavier(), V, H, V, dtype)
    return one(key) if S is None else jax.vmap(one)(jax.random.split(key, S))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_pascanu_bound_holds(key, act):
    p = rand_net(key, act, gain=0.9)
    x = np.asarray(random_batch(key, 5, 1, 30)[0])[0]
    bound = pascanu_log10_bound(act, p.W_hh)
    for t in (1, 10, 25):
        top = jacobian_product_singular_values(p, x, act, t)[0]
        assert math.log10(top) <= bound * (30 - t) + 1e-9


@pytest.mark.e2e
def test_linear_profile_is_exact_and_orthogonal_gives_rho_powers(key):
    T = 25
    p = nets(key, 1.05, spectral, H=10, V=5)
    x, y = random_batch(jax.random.fold_in(key, 1), 5, 4, T)
    g = make_time_grads("linear", "last")(p, x, y)
    probe = 10 ** np.asarray(jax.jit(make_probe(vanilla("linear"), "last"))(p, x, y)
                             .log10_grad_norm)
    np.testing.assert_allclose(linear_profile(p.W_hh, g.dL_dH[-1], T), probe, rtol=1e-10)
    rho = 0.8
    W = np.asarray(jax.jit(orthogonal(rho), static_argnums=(1, 2))(key, (10, 10), jnp.float64))
    prof = linear_profile(W, np.ones((3, 10)), T)
    np.testing.assert_allclose(prof, prof[-1] * rho ** (T - np.arange(1, T + 1)), rtol=1e-12)
    assert effective_gain(W) == pytest.approx(rho, rel=1e-12)


def test_lyapunov_of_linear_orthogonal_is_log_rho(key):
    rho = 0.7
    p = nets(key, rho, orthogonal, V=5)
    x = random_batch(key, 5, 3, 50)[0]
    lam = np.asarray(jax.jit(make_lyapunov(vanilla("linear"), k=4))(p, x))
    np.testing.assert_allclose(lam, math.log(rho), rtol=1e-10)


@pytest.mark.parametrize("act", ["tanh", *(pytest.param(a, marks=pytest.mark.slow)
                                         for a in ("relu", "sigmoid"))])
@pytest.mark.e2e
def test_lyapunov_matches_brute_force_singular_values(key, act):
    p = rand_net(key, act, H=10, gain=1.5)
    # with k = H, the QR logs add up to log |det dH_T/dH_0| exactly (short T: the brute-force
    # product still resolves its smallest singular value in float64)
    T = 8
    x = random_batch(jax.random.fold_in(key, 3), 5, 1, T)[0]
    sv = jacobian_product_singular_values(p, np.asarray(x)[0], act, 0)
    lam_all = np.asarray(jax.jit(make_lyapunov(vanilla(act), k=10))(p, x))
    with np.errstate(divide="ignore"):  # a dead ReLU unit makes the determinant 0
        assert lam_all.sum() * T == pytest.approx(np.log(sv).sum(), rel=1e-8)
    assert lam_all[0] * T <= math.log(sv[0]) + 1e-9  # one direction grows at most by sigma_1
    # long T: the top exponent is the growth rate of the top singular value
    T = 300
    x = random_batch(jax.random.fold_in(key, 4), 5, 1, T)[0]
    lam = float(jax.jit(make_lyapunov(vanilla(act), k=1))(p, x)[0])
    top = math.log(jacobian_product_singular_values(p, np.asarray(x)[0], act, 0)[0]) / T
    assert lam == pytest.approx(top, abs=0.02)


def test_input_drive_variance_of_one_hot_tokens(key):
    p = nets(key, 1.0, H=64)
    x = random_batch(key, 28, 64, 40)[0]
    want = np.mean(np.asarray(p.W_xh) ** 2)  # uniform tokens: the mean square of W_xh's rows
    assert input_drive_variance(p.W_xh, x) == pytest.approx(want, rel=0.05)


def test_input_drive_variance_is_the_mean_square_of_the_drive():
    # Against X_t W_xh formed outright, for tokens (a row gather) and real inputs (B, T, D).
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 7))
    tokens = rng.integers(0, 5, size=(3, 4))
    real = rng.normal(size=(3, 4, 5))
    assert input_drive_variance(W, tokens) == pytest.approx(np.mean(W[tokens] ** 2), rel=1e-12)
    assert input_drive_variance(W, real) == pytest.approx(np.mean((real @ W) ** 2), rel=1e-12)


@pytest.mark.parametrize("act,g", [("tanh", 0.8), ("relu", 1.0), *(
    pytest.param(a, g, marks=pytest.mark.slow) for a, g in (("tanh", 2.0), ("sigmoid", 3.0),
                                                            ("linear", 0.9)))])
@pytest.mark.e2e
def test_wide_network_factor_matches_mean_field(key, act, g):
    """H = 512: the measured per-step factor of ||dL/dH_t|| agrees with sqrt(chi_1) within a
    few percent away from criticality."""
    H, T, S = 512, 48, 4
    keys = jax.random.split(key, S)
    ps = nets(key, g, H=H, S=S, dtype=jnp.float32)  # one program for every case
    xs, ys = jax.vmap(lambda k: random_batch(k, 28, 16, T))(keys)
    prof = 10 ** np.asarray(jax.jit(jax.vmap(make_probe(vanilla(act), "last")))(ps, xs, ys)
                            .log10_grad_norm, np.float64)
    measured = 10 ** np.median([log10_slope(p)[0] for p in prof])
    ps, xs = jax.tree.map(np.asarray, (ps, xs))
    v = np.mean([input_drive_variance(ps.W_xh[s], xs[s]) for s in range(S)])
    predicted = 10 ** mean_field(act, g, input_var=v)["log10_factor_per_step"]
    assert measured == pytest.approx(predicted, rel=0.04)


@pytest.mark.e2e
def test_job_summary_sets_theory_beside_measurement(tmp_path):
    """Linear RNN, W_hh = 0.9 * orthogonal, loss at the last step: the measured slope, the mean
    field, Pascanu's bound and the top Lyapunov exponent all equal log10 0.9 per step."""
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    from rnnjax.app.config import register_configs
    from rnnjax.app.job import run_job
    from rnnjax.app.validate import validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=[
            "activation=linear", "init=orthogonal", "init.gain=0.9", "probe.loss_at=last",
            "seq_len=40", "hidden_size=16", "batch_size=4", "seeds=2", "dtype=float64"]))
    th = run_job(cfg, tmp_path)["headline"]["theory"]
    want = math.log10(0.9)
    assert th["measured_log10_slope_per_step_back"] == pytest.approx(want, abs=1e-9)
    assert th["mean_field"]["log10_factor_per_step"] == pytest.approx(want, abs=1e-9)
    assert th["mean_field"]["relative_error"] < 1e-6
    assert th["pascanu_log10_bound_per_step"] == pytest.approx(want, abs=1e-9)
    assert th["lyapunov_top_log10_per_step"] == pytest.approx(want, abs=1e-9)
    assert len(th["lyapunov_exponents_per_seed"]) == 2
    assert th["pascanu_guarantees_vanishing"] is True


def test_effective_gain_of_a_stack_is_each_ones_and_finite_median_drops_nans(key):
    from rnnjax.core.theory import finite_median

    Ws = np.asarray(jax.vmap(lambda k: gaussian(1.3)(k, (32, 32), jnp.float64))(
        jax.random.split(key, 3)))
    each = [float(np.sqrt(32 * np.mean(W**2))) for W in Ws]
    np.testing.assert_allclose(effective_gain(Ws), each, rtol=1e-13)
    assert effective_gain(Ws[0]).shape == () and effective_gain(Ws[0]) == pytest.approx(each[0])
    assert finite_median([1.0, np.nan, 3.0, np.inf, 2.0]) == 2.0
    assert math.isnan(finite_median([np.nan, -np.inf]))


def test_the_vanilla_theory_comes_through_its_spec_with_the_jobs_activation(key):
    """theory_summary calls the cell's own theory with the context it declares: the vanilla
    RNN's mean field is of the job's activation (relu here, not the default tanh)."""
    from rnnjax.app.summary import theory_summary
    from rnnjax.core.cells import CELLS

    S, H = 2, 16
    keys = jax.random.split(key, S)
    ps = nets(key, 1.2, H=H, S=S)
    xs, ys = jax.vmap(lambda k: random_batch(k, 28, 4, 12))(keys)
    th = theory_summary(vanilla("relu"), ps, xs, -0.1, CELLS["vanilla"].theory, {}, y=ys,
                        kind="tokens", loss_at="last", activation="relu", init="gaussian",
                        init_value=1.2)
    gain = float(np.median(effective_gain(ps.W_hh)))
    v = float(np.median([input_drive_variance(ps.W_xh[s], xs[s]) for s in range(S)]))
    want = mean_field("relu", gain, v, 0.0)
    assert th["mean_field"]["chi1"] == pytest.approx(want["chi1"], rel=1e-12)
    assert th["mean_field"]["chi1"] != pytest.approx(mean_field("tanh", gain, v, 0.0)["chi1"])
    bounds = [pascanu_log10_bound("relu", w) for w in ps.W_hh]
    assert th["pascanu_log10_bound_per_step"] == pytest.approx(float(np.median(bounds)))
    assert th["applies"] is True and "lyapunov_top_log10_per_step" in th
