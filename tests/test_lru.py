"""The LRU cell (Orvieto et al. 2023): its probe against an independent complex numpy BPTT, its
ring initialization, the exact gradient profile, dL/dlambda, its options and one job."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from numpy_lru import lru_bptt

from rnnjax.cells import CELLS, unroll
from rnnjax.cells.lru import (
    LRUParams,
    eigenvalues,
    exact_log10_profile,
    expected_sensitivity,
    fitted_log10_slope,
    init_params,
    lru,
    lru_readout,
    lru_step,
    make_lambda_terms,
    parameter_grads,
    theory,
)
from rnnjax.config import ConfigError, register_configs, validate
from rnnjax.job import run_job
from rnnjax.losses import make_loss
from rnnjax.probes import make_probe
from rnnjax.results import log10_slope
from rnnjax.tasks import make_adding_batch
from rnnjax.train import init_state, make_optimizer, make_train_chunk

register_configs()
D, H, Q, B, T = 5, 4, 5, 3, 12
SEEDS = 3


def nets(key, dtype, r_min=0.5, r_max=0.95, normalize=True, D=D, Q=Q, seeds=SEEDS):
    """`seeds` random networks (leading axis), with non-zero output biases."""
    def one(k):
        k_p, k_b = jax.random.split(k)
        p = init_params(k_p, D, H, Q, r_min, r_max, 2 * math.pi, normalize, dtype)
        return p._replace(b_q=0.3 * jax.random.normal(k_b, (Q,), dtype))

    return jax.vmap(one)(jax.random.split(key, seeds))


def batches(key, kind="tokens", seeds=SEEDS, T=T):
    """(x, y) for `seeds` networks: tokens (S, B, T) with token targets, or real inputs
    (S, B, T, D) with real targets (S, B)."""
    kx, ky = jax.random.split(key)
    if kind == "tokens":
        return (jax.random.randint(kx, (seeds, B, T), 0, D, dtype=jnp.int32),
                jax.random.randint(ky, (seeds, B, T), 0, Q, dtype=jnp.int32))
    return (jax.random.normal(kx, (seeds, B, T, D)), jax.random.normal(ky, (seeds, B)))


@functools.cache
def probe(loss_at, kind="tokens", normalize=True):
    """The probe of every seed at once, compiled once per setting for the whole file (the
    cell's step does not depend on r_min, r_max or max_phase, only its initialization)."""
    return jax.jit(jax.vmap(make_probe(lru(normalize=normalize), loss_at, kind)))


def one(tree, s):
    return jax.tree.map(lambda a: a[s], tree)


def as_numpy(p):
    return {k: np.asarray(v) for k, v in p._asdict().items()}


CASES = [("tokens", "all", True), ("tokens", "last", False), ("regression", "last", True)]


# float32 with the loss at the last step: test_equal_radii_give_exactly_log10_r_per_step_back
@pytest.mark.parametrize("kind,loss_at,normalize,dtype,rtol", [
    (*case, dtype, rtol) for case in CASES
    for dtype, rtol in [(jnp.float64, 1e-8), (jnp.float32, 1e-4)]
    if case == CASES[0] or dtype == jnp.float64])
def test_probe_matches_numpy_bptt(key, kind, loss_at, normalize, dtype, rtol):
    """grad_norm (over Re and Im of h_t) and param_grad_norm (step t's share of the gradient
    of nu_log and theta_log) against the complex numpy BPTT, on several seeds."""
    ps = nets(key, dtype, normalize=normalize, Q=1 if kind == "regression" else Q)
    x, y = batches(jax.random.fold_in(key, 1), kind)
    res = probe(loss_at, kind, normalize)(ps, x, y)
    assert res.log10_grad_norm.dtype == dtype
    for s in range(SEEDS):
        ref = lru_bptt(as_numpy(one(ps, s)), np.asarray(x[s]), np.asarray(y[s]), loss_at,
                       normalize, kind)
        want_g = np.sqrt(np.sum(np.abs(ref["G"]) ** 2, axis=(1, 2)))
        want_pg = np.sqrt(np.sum(ref["d_nu"] ** 2 + ref["d_theta"] ** 2, axis=1))
        got_g = 10.0 ** np.asarray(res.log10_grad_norm[s], np.float64)
        got_pg = 10.0 ** np.asarray(res.log10_param_grad_norm[s], np.float64)
        np.testing.assert_allclose(float(res.loss[s]), ref["loss"], rtol=rtol)
        np.testing.assert_allclose(got_g, want_g, rtol=rtol)
        # step 1's share is exactly 0 (h_0 = 0)
        assert got_pg[0] == want_pg[0] == 0
        np.testing.assert_allclose(got_pg[1:], want_pg[1:], rtol=rtol)
        assert want_g.min() > 0 and want_pg[1:].min() > 0  # a comparison that can fail
    if loss_at == "last":  # the profile decays going back
        assert want_g[0] < 0.5 * want_g[-1]


def test_ring_initialization_has_the_papers_distribution(key):
    """|lambda|^2 uniform on [r_min^2, r_max^2], arg lambda uniform on [0, max_phase],
    gamma = sqrt(1 - |lambda|^2), and the input and output matrices at the paper's scale."""
    n, r_min, r_max, phase = 10000, 0.4, 0.9, 1.3
    p = init_params(key, 50, n, 3, r_min, r_max, phase, True, jnp.float64)
    lam = np.asarray(eigenvalues(p))
    mod2, arg = np.abs(lam) ** 2, np.angle(lam)
    assert mod2.min() >= r_min**2 - 1e-12 and mod2.max() <= r_max**2 + 1e-12
    assert arg.min() >= 0 and arg.max() <= phase + 1e-12

    def ks(sample, lo, hi):  # Kolmogorov-Smirnov distance to U[lo, hi]
        s = np.sort(sample)
        cdf = (s - lo) / (hi - lo)
        i = np.arange(1, len(s) + 1)
        return max(np.max(i / len(s) - cdf), np.max(cdf - (i - 1) / len(s)))

    limit = 1.95 / math.sqrt(n)  # the 0.1% critical value
    assert ks(mod2, r_min**2, r_max**2) < limit
    assert ks(arg, 0, phase) < limit
    # uniform in |lambda| instead would fail: the test can tell the two apart
    assert ks(np.abs(lam), r_min, r_max) > 3 * limit
    np.testing.assert_allclose(np.exp(2 * np.asarray(p.gamma_log)) + mod2, 1, rtol=1e-12)
    assert np.std(p.B_re) == pytest.approx(1 / math.sqrt(2 * 50), rel=0.02)
    assert np.std(p.B_im) == pytest.approx(1 / math.sqrt(2 * 50), rel=0.02)
    assert np.std(p.C_re) == pytest.approx(1 / math.sqrt(n), rel=0.02)
    assert np.std(p.D) == pytest.approx(1, rel=0.3)
    # r_min = r_max: every modulus is r; the normalization stays exact near 1
    q = init_params(key, 3, 8, 3, 0.9999, 0.9999, 0.0, True, jnp.float64)
    np.testing.assert_allclose(np.abs(eigenvalues(q)), 0.9999, rtol=1e-12)
    np.testing.assert_allclose(np.exp(q.gamma_log), math.sqrt(1 - 0.9999**2), rtol=1e-9)
    assert np.all(np.angle(eigenvalues(q)) == 0)


def test_gamma_normalizes_the_input_and_is_unused_without_it(key):
    """With normalize, h_t = lambda h_{t-1} + gamma (x_t B); without, gamma = 1 whatever
    gamma_log holds, and gamma_log gets no gradient."""
    x, y = batches(key)
    x, y = x[0], y[0]
    for normalize in (True, False):
        p = one(nets(key, jnp.float64, normalize=normalize), 0)
        cell = lru(normalize=normalize)

        @jax.jit
        def first_state_and_grad(p, cell=cell):
            def loss(gamma_log):
                outputs = unroll(cell, p._replace(gamma_log=gamma_log), x)[1]
                return make_loss("tokens", "all")(outputs, y)

            return cell.step(p, cell.initial_state(p, B), x[:, 0]).h, jax.grad(loss)(p.gamma_log)

        h, g = first_state_and_grad(p)  # h_1 = gamma (x_1 B)
        drive = np.asarray(p.B_re)[np.asarray(x[:, 0])] + 1j * np.asarray(p.B_im)[x[:, 0]]
        gamma = np.exp(np.asarray(p.gamma_log)) if normalize else 1.0
        np.testing.assert_allclose(h, gamma * drive, rtol=1e-12)
        if normalize:
            assert np.all(np.asarray(gamma) < 1)
        else:
            assert np.all(np.asarray(p.gamma_log) == 0)
            # gamma_log is not used: another value changes nothing
            h2, _ = first_state_and_grad(p._replace(gamma_log=p.gamma_log + 1))
            np.testing.assert_array_equal(h, h2)
        assert (np.abs(g).max() > 0) == normalize


@pytest.mark.parametrize("r,dtype,tol", [(0.5, jnp.float64, 1e-10), (0.99, jnp.float64, 1e-10),
                                         (1.0, jnp.float64, 1e-10), (0.9, jnp.float32, 1e-5)])
def test_equal_radii_give_exactly_log10_r_per_step_back(key, r, dtype, tol):
    """r_min = r_max = r, loss at the last step: dL/dh_t = dL/dh_T lambda^(T - t), so
    ||dL/dh_t|| = r^(T - t) ||dL/dh_T||, and the theory's prediction is the measured slope."""
    T = 40
    ps = nets(key, dtype, r, r)
    x, y = batches(jax.random.fold_in(key, 2), T=T)
    res = probe("last")(ps, x, y)
    g = 10.0 ** np.asarray(res.log10_grad_norm, np.float64)
    r_exact = np.exp(-np.exp(np.asarray(ps.nu_log, np.float64)))[:, :1]  # |lambda| as stored
    np.testing.assert_allclose(g, g[:, -1:] * r_exact ** (T - np.arange(1, T + 1)),
                               rtol=100 * tol)
    measured = float(np.median([log10_slope(gs)[0] for gs in g]))
    for targets in ({}, {"y": y, "kind": "tokens", "loss_at": "last"}):
        th = theory(None, ps, x, measured, **targets, r_min=r, r_max=r, normalize=True)
        assert th["prediction"] == "exact (LRU)"
        assert th["predicted_log10_slope_per_step_back"] == pytest.approx(measured, abs=tol)
        assert th["predicted_log10_slope_per_step_back"] == pytest.approx(math.log10(r),
                                                                          abs=tol)
        assert th["r"] == r and th["inverse_one_minus_r"] == (None if r == 1 else 1 / (1 - r))


def test_exact_profile_is_the_weighted_mix(key):
    """r_min < r_max: the measured profile equals sqrt(sum_k w_k |lambda_k|^(2 (T - t))) with
    w_k = sum_b |dL/dh_T,k|^2, at every t, and the predicted slope is the measured one."""
    T = 40
    ps = nets(key, jnp.float64, 0.3, 0.97)
    x, y = batches(jax.random.fold_in(key, 3), T=T)
    res = probe("last")(ps, x, y)
    th = theory(None, ps, x, 0.0, y=y, kind="tokens", loss_at="last", r_min=0.3, r_max=0.97)
    terms = jax.vmap(make_lambda_terms(True, "tokens", "last"))(ps, x, y)
    for s in range(SEEDS):
        log_r = -np.exp(np.asarray(ps.nu_log[s], np.float64))
        want = exact_log10_profile(log_r, np.asarray(terms.last_weights[s]), T)
        np.testing.assert_allclose(res.log10_grad_norm[s], want, rtol=1e-10)
        measured = log10_slope(10.0 ** np.asarray(res.log10_grad_norm[s]))[0]
        assert th["predicted_log10_slope_per_seed"][s] == pytest.approx(measured, abs=1e-10)
    # a mix: the slope lies strictly between the smallest and the largest log10 |lambda|
    slope = th["predicted_log10_slope_per_step_back"]
    assert math.log10(th["lambda_modulus_min"]) + 0.01 < slope
    assert slope < math.log10(th["lambda_modulus_max"]) - 0.01
    # without the targets no weights: no prediction for r_min < r_max
    assert theory(None, ps, x, 0.0, r_min=0.3, r_max=0.97)["prediction"] is None


def test_fitted_slope_is_the_headlines_rule(key):
    rng = np.random.default_rng(0)
    for T in (1, 2, 3, 5, 17, 64):
        for _ in range(5):
            g = 10.0 ** rng.normal(0, 3, T)
            g[rng.random(T) < 0.15] = 0.0  # underflowed steps
            g[rng.random(T) < 0.05] = np.inf
            want = log10_slope(g)[0]
            with np.errstate(divide="ignore"):
                got = fitted_log10_slope(np.log10(g))
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want,
                                                                                 abs=1e-12)


@pytest.mark.parametrize("kind,loss_at,normalize", CASES)
def test_lambda_gradient_against_numpy(key, kind, loss_at, normalize):
    """dL/dlambda (gamma held fixed) and its chain rule to nu_log and theta_log against the
    numpy BPTT, on every seed."""
    ps = nets(key, jnp.float64, normalize=normalize, Q=1 if kind == "regression" else Q)
    x, y = batches(jax.random.fold_in(key, 4), kind)
    terms = jax.jit(jax.vmap(make_lambda_terms(normalize, kind, loss_at)))(ps, x, y)
    g_nu, g_theta = jax.vmap(parameter_grads)(ps, terms.lambda_grad)
    for s in range(SEEDS):
        ref = lru_bptt(as_numpy(one(ps, s)), np.asarray(x[s]), np.asarray(y[s]), loss_at,
                       normalize, kind)
        np.testing.assert_allclose(terms.lambda_grad[s], ref["G_lambda"], rtol=1e-9)
        np.testing.assert_allclose(g_nu[s], ref["d_nu"].sum(0), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(g_theta[s], ref["d_theta"].sum(0), rtol=1e-9, atol=1e-15)
        assert np.abs(ref["G_lambda"]).min() > 0


def test_lambda_gradient_against_autodiff(key):
    """dL/dlambda against a central difference in lambda; its chain rule to nu_log and
    theta_log against jax.grad of the loss; the sensitivity dh_T/dlambda against forward-mode
    autodiff."""
    kind, loss_at, normalize = "tokens", "all", True
    ps = nets(key, jnp.float64)
    x, y = batches(jax.random.fold_in(key, 4), kind)
    p, xs, ys = one(ps, 0), x[0], y[0]
    terms = jax.jit(make_lambda_terms(normalize, kind, loss_at))(p, xs, ys)
    loss = make_loss(kind, loss_at)
    cell = lru(normalize=normalize)

    def last_state_and_loss(lam):
        def step(state, x_t):
            state = lru_step(p, lam, normalize, state, x_t)
            return state, lru_readout(p, state)

        state, outputs = jax.lax.scan(step, cell.initial_state(p, B), jnp.swapaxes(xs, 0, 1))
        return state.h, loss(outputs, ys)

    lam = eigenvalues(p)
    eps = 1e-6
    steps = jnp.concatenate([jnp.eye(H), 1j * jnp.eye(H)]) * eps  # (2H, H): Re and Im

    @jax.jit
    def central(steps):
        f = jax.vmap(lambda d: last_state_and_loss(lam + d)[1])
        return (f(steps) - f(-steps)) / (2 * eps)

    d = central(steps)
    np.testing.assert_allclose(terms.lambda_grad, d[:H] + 1j * d[H:], rtol=1e-6, atol=1e-10)

    def L_params(nu_log, theta_log):
        return loss(unroll(cell, p._replace(nu_log=nu_log, theta_log=theta_log), xs)[1], ys)

    want_nu, want_theta = jax.jit(jax.grad(L_params, argnums=(0, 1)))(p.nu_log, p.theta_log)
    got_nu, got_theta = parameter_grads(p, terms.lambda_grad)
    np.testing.assert_allclose(got_nu, want_nu, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got_theta, want_theta, rtol=1e-9, atol=1e-15)
    _, ds = jax.jit(lambda: jax.jvp(lambda lam: last_state_and_loss(lam)[0], (lam,),
                                    (jnp.ones(H, lam.dtype),)))()
    assert float(terms.sensitivity_rms) == pytest.approx(
        float(jnp.sqrt(jnp.mean(jnp.abs(ds) ** 2))), rel=1e-10)


def test_expected_sensitivity_is_the_mean_over_random_tokens(key):
    """The i.i.d. expectation of |dh_T/dlambda|^2, against the mean over many token batches;
    and its closed form for T -> infinity without a mean drive: (1 + r^2) / (1 - r^2)^3."""
    T, n = 30, 2048
    p = init_params(key, D, H, Q, 0.6, 0.9, 2 * math.pi, True, jnp.float64)
    x = jax.random.randint(jax.random.fold_in(key, 5), (n, T), 0, D)
    sens = make_lambda_terms(True)(p, x).sensitivity_rms
    assert float(sens) == pytest.approx(expected_sensitivity(p, T, True), rel=0.03)
    r = 0.95
    p = init_params(key, 64, 1, Q, r, r, 0.0, False, jnp.float64)
    p = p._replace(B_re=p.B_re - p.B_re.mean(0), B_im=p.B_im - p.B_im.mean(0))
    var = float(jnp.mean(p.B_re**2 + p.B_im**2))
    want = math.sqrt(var * (1 + r**2) / (1 - r**2) ** 3)
    assert expected_sensitivity(p, 2000, False) == pytest.approx(want, rel=1e-9)


def compose_lru(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["cell=lru", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["cell.r_min=0.99", "cell.r_max=0.9"], "cell.r_min=0.99 is invalid: must be <= cell.r_max"),
    (["cell.r_min=0"], "cell.r_min=0.0 is invalid: must be in (0, 1]"),
    (["cell.r_min=-0.5"], "cell.r_min=-0.5 is invalid: must be in (0, 1]"),
    (["cell.r_max=1.5"], "cell.r_max=1.5 is invalid: must be in (0, 1]"),
    (["cell.max_phase=-1"], "cell.max_phase=-1.0 is invalid: must be a finite number >= 0"),
    (["activation=relu"], "activation=relu does not apply to cell=lru; allowed: tanh"),
    (["init=orthogonal"], "init=orthogonal does not apply to cell=lru; allowed: normal"),
    (["init.std=0.1"], "init.std=0.1 does not apply to cell=lru"),
    (["+cell.forget_bias=1"], "cell.forget_bias is not an option of cell=lru"),
])
def test_bad_options_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose_lru(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [[], ["cell.r_min=0.8", "cell.r_max=0.8"],
                                       ["cell.r_min=1", "cell.r_max=1"],
                                       ["cell.max_phase=0", "cell.normalize=false"],
                                       ["activation=tanh", "init=normal"]])
def test_good_options_pass(overrides):
    cfg = validate(compose_lru(overrides))
    assert cfg.cell.name.value == "lru"


def test_experiment_sweeps_equal_radii_toward_one():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=curse_of_memory", "cell.r_min=0.99"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert [float(r) for r in params["cell.r_min"].split(",")] == [0.5, 0.9, 0.99, 0.999]
    assert params["cell.normalize"] == "true,false"
    c = validate(cfg)
    assert c.cell.name.value == "lru" and c.cell.r_max == c.cell.r_min == 0.99
    assert c.probe.loss_at.value == "last" and c.seq_len >= 8 / (1 - 0.999)


def test_job_writes_the_lru_files(tmp_path):
    """One in-process job: params.npz holds the LRU's fields with a leading seed axis; the
    grad_norm column is the numpy BPTT's; the summary holds the exact prediction."""
    S, Hs, Ts, V = 2, 6, 16, 28
    cfg = validate(compose_lru([f"seeds={S}", f"hidden_size={Hs}", f"seq_len={Ts}",
                                "batch_size=3", "probe.loss_at=last", "cell.r_min=0.8",
                                "cell.r_max=0.8", "dtype=float64"]))
    summary = run_job(cfg, tmp_path)
    params = dict(np.load(tmp_path / "params.npz"))
    shapes = {"nu_log": (S, Hs), "theta_log": (S, Hs), "gamma_log": (S, Hs),
              "B_re": (S, V, Hs), "B_im": (S, V, Hs), "C_re": (S, Hs, V), "C_im": (S, Hs, V),
              "D": (S, V), "W_hq": (S, V, V), "b_q": (S, V)}
    assert set(params) == set(LRUParams._fields)
    assert {k: v.shape for k, v in params.items()} == shapes
    df = pd.read_parquet(tmp_path / "grad_norms.parquet")
    assert {"seed", "t", "grad_norm", "param_grad_norm", "underflow", "overflow"} <= set(df)
    assert (df.cell == "lru").all() and len(df) == S * Ts
    batch = np.load(tmp_path / "batch.npz")
    for s in range(S):
        ref = lru_bptt({k: v[s] for k, v in params.items()}, batch["x"][s], batch["y"][s],
                       "last")
        want = np.sqrt(np.sum(np.abs(ref["G"]) ** 2, axis=(1, 2)))
        got = df[df.seed == s].sort_values("t").grad_norm.to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9)
    h = summary["headline"]
    th = json.loads((tmp_path / "summary.json").read_text())["headline"]["theory"]
    assert summary["status"] == "ok" and th["prediction"] == "exact (LRU)"
    assert h["log10_slope_per_step_back"] == pytest.approx(math.log10(0.8), abs=1e-10)
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(math.log10(0.8),
                                                                      abs=1e-10)
    assert th["inverse_one_minus_r"] == pytest.approx(5) and th["state_lambda_sensitivity"] > 0


def test_short_training_lowers_the_loss(key):
    """rnnjax.train works on the LRU unchanged: 100 Adam steps on the adding problem (T = 20)
    take the squared error well below its value at initialization, for every seed."""
    cell = lru()
    batch = make_adding_batch(32, 20)
    ps = jax.vmap(lambda k: cell.init(k, 2, 16, 1, jnp.float32))(jax.random.split(key, 2))
    tx = make_optimizer("adam", 3e-3, None)

    def train_batch(k, i):
        x, y = batch(jax.random.fold_in(k, i))
        return x, y, jnp.ones((32,), jnp.float32)

    chunk = make_train_chunk(cell, "last", "regression", tx, train_batch, 100, 100)
    state, m = jax.jit(jax.vmap(chunk, (0, None, None)))(
        jax.vmap(init_state, (0, None))(ps, tx), jax.random.fold_in(key, 1), jnp.asarray(0))
    loss = np.asarray(m.loss)  # (S, 100)
    assert np.isfinite(loss).all() and bool(state.alive.all())
    assert np.all(loss[:, -10:].mean(1) < 0.2 * loss[:, :10].mean(1))
    assert CELLS["lru"].build is lru
