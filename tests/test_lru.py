"""The LRU cell (Orvieto et al. 2023): its probe against an independent complex numpy BPTT, its
ring initialization, the exact gradient profile, dL/dlambda, its options and one job.

Every compiled function is built once per setting for the whole file (`probe`,
`rnnjax.core.cells.lru._seed_terms`) and every test uses the same sizes, so that the file compiles
each probe and each lambda scan once."""

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

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import log10_slope
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS
from rnnjax.core.cells.lru import (
    LRUParams,
    Ring,
    _seed_terms,
    eigenvalues,
    exact_log10_profile,
    expected_sensitivity,
    fitted_log10_slope,
    init_params,
    lru,
    normalization_log,
    ring_init,
    theory,
)
from rnnjax.core.probes import make_probe
from rnnjax.core.train import Training, init_state, make_optimizer, make_train_chunk

register_configs()
# input width, complex units, outputs (all different, so a transposed matrix cannot pass),
# batch, steps, networks
D, H, Q, B, T = 5, 4, 3, 3, 16
SEEDS = 3


def nets(seed, dtype, r_min=0.5, r_max=0.95, normalize=True, Q=Q):
    """SEEDS random networks (leading axis), drawn in numpy as the paper's code draws them
    (no compilation; `init_params` itself is tested on its own), with non-zero output biases."""
    rng = np.random.default_rng(seed)
    u1, u2 = rng.random((2, SEEDS, H))
    with np.errstate(divide="ignore"):  # r = 1: nu_log = -inf, and gamma = 0 with normalize
        nu_log = np.log(-0.5 * np.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        gamma_log = (0.5 * np.log(1 - np.exp(-2 * np.exp(nu_log))) if normalize
                     else np.zeros((SEEDS, H)))

    def normal(*shape, var):
        return rng.normal(0, math.sqrt(var), (SEEDS, *shape))

    p = LRUParams(nu_log=nu_log, theta_log=np.log(2 * math.pi * u2), gamma_log=gamma_log,
                  B_re=normal(D, H, var=1 / (2 * D)), B_im=normal(D, H, var=1 / (2 * D)),
                  C_re=normal(H, H, var=1 / H), C_im=normal(H, H, var=1 / H),
                  D=normal(D, H, var=1 / D), W_hq=normal(H, Q, var=1 / H),
                  b_q=normal(Q, var=0.09))
    return LRUParams(*(np.asarray(a, dtype) for a in p))


def batches(seed, kind="tokens"):
    """(x, y) for SEEDS networks: tokens (S, B, T) with token targets, or real inputs
    (S, B, T, D) with real targets (S, B)."""
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return (rng.integers(0, D, (SEEDS, B, T)).astype(np.int32),
                rng.integers(0, Q, (SEEDS, B, T)).astype(np.int32))
    return rng.normal(size=(SEEDS, B, T, D)), rng.normal(size=(SEEDS, B))


def probe(loss_at, kind="tokens", normalize=True):
    """The probe of every seed at once, compiled once per setting and dtype for the whole file
    (the cell's step does not depend on r_min, r_max or max_phase, only its initialization)."""
    return _probe(loss_at, kind, normalize)  # one cache entry whichever arguments are defaulted


@functools.cache
def _probe(loss_at, kind, normalize):
    return jax.jit(jax.vmap(make_probe(lru(normalize=normalize), loss_at, kind)))


def one(tree, s):
    return jax.tree.map(lambda a: a[s], tree)


def as_numpy(p):
    return {k: np.asarray(v) for k, v in p._asdict().items()}


# (kind, loss_at, normalize): every loss, both inputs, with and without the normalization
CASES = [("tokens", "all", False), ("tokens", "last", True), ("regression", "last", True)]


# Real inputs in float32 (whose probe the equal-radii test reuses); in float64 the lambda
# gradient's test holds their step and read-out to the numpy BPTT at 1e-9.
@pytest.mark.parametrize("kind,loss_at,normalize,dtype,rtol", [
    (*CASES[0], jnp.float64, 1e-8), (*CASES[1], jnp.float64, 1e-8),
    (*CASES[2], jnp.float32, 1e-4)])
@pytest.mark.e2e
def test_probe_matches_numpy_bptt(kind, loss_at, normalize, dtype, rtol):
    """grad_norm (over Re and Im of h_t only, not the skip term the state also carries) and
    param_grad_norm (step t's share of the gradient of nu_log and theta_log) against the
    complex numpy BPTT, on several seeds."""
    ps = nets(1, dtype, normalize=normalize, Q=1 if kind == "regression" else Q)
    x, y = batches(1, kind)
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


@functools.cache
def first_step(normalize):
    """(params, x_1) -> (state h_1, o_1) from the zero state, jitted once per setting."""
    cell = lru(normalize=normalize)

    def f(p, x_t):
        state = cell.step(p, cell.initial_state(p, x_t.shape[0]), x_t)
        return state, cell.readout(p, state)

    return jax.jit(f)


def test_the_readout_has_the_hidden_width():
    """y_t = Re(h_t C) + x_t D has width H: D is a row lookup for tokens and a matmul for real
    inputs; the state carries h_t and the skip term x_t D, and `hidden` is h_t alone."""
    p = one(nets(2, np.float64), 0)
    tokens = np.array([0, 3, 4], np.int32)
    real = np.random.default_rng(2).normal(size=(B, D))
    C = p.C_re + 1j * p.C_im
    for x_t, dense in ((tokens, np.eye(D)[tokens]), (real, real)):
        state, o = first_step(True)(p, x_t)
        assert state.h.shape == state.skip.shape == (B, H) and lru().hidden(state) is state.h
        np.testing.assert_allclose(state.skip, dense @ p.D, rtol=1e-12)
        y = (np.asarray(state.h) @ C).real + dense @ p.D
        np.testing.assert_allclose(o, y @ p.W_hq + p.b_q, rtol=1e-12)


def test_ring_initialization_has_the_papers_distribution(key):
    """|lambda|^2 uniform on [r_min^2, r_max^2], arg lambda uniform on [0, max_phase],
    gamma = sqrt(1 - |lambda|^2), and every matrix at the paper's fan-in scale."""
    n, r_min, r_max, phase = 10000, 0.4, 0.9, 1.3

    @jax.jit
    def ring(r_min, r_max, phase):  # (lambda, gamma) of n units; compiled once
        nu_log, theta_log = ring_init(key, n, r_min, r_max, phase, jnp.float64)
        lam = eigenvalues(LRUParams(nu_log, theta_log, *[None] * 8))
        return lam, jnp.exp(normalization_log(nu_log))

    lam, gamma = map(np.asarray, ring(r_min, r_max, phase))
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
    np.testing.assert_allclose(gamma**2, 1 - mod2, rtol=1e-12)
    # r_min = r_max: every modulus is r; the normalization stays exact near 1
    lam, gamma = map(np.asarray, ring(0.9999, 0.9999, 0.0))
    np.testing.assert_allclose(np.abs(lam), 0.9999, rtol=1e-12)
    np.testing.assert_allclose(gamma, math.sqrt(1 - 0.9999**2), rtol=1e-9)
    assert np.all(np.angle(lam) == 0)
    # init_params: that ring, its gamma, and the matrices: B N(0, 1/(2 Din)) per part, C N(0,
    # 1/H) per part, D N(0, 1/Din), W_hq N(0, 1/H): fan-in scaling, as the paper's code scales
    # B and C (its diagonal D has fan-in 1)
    Din, Hn, Qn = 50, 300, 40
    init = jax.jit(init_params, static_argnums=(1, 2, 3, 4, 5, 6))
    p = jax.tree.map(np.asarray, init(key, Din, Hn, Qn, Ring(0.9999, 0.9999, 0.0), True,
                                      jnp.float64))
    np.testing.assert_allclose(np.exp(-np.exp(p.nu_log)), 0.9999, rtol=1e-12)
    np.testing.assert_allclose(np.exp(p.gamma_log), math.sqrt(1 - 0.9999**2), rtol=1e-9)
    shapes = {"B_re": (Din, Hn), "B_im": (Din, Hn), "C_re": (Hn, Hn), "C_im": (Hn, Hn),
              "D": (Din, Hn), "W_hq": (Hn, Qn)}
    stds = {"B_re": 1 / math.sqrt(2 * Din), "B_im": 1 / math.sqrt(2 * Din),
            "C_re": 1 / math.sqrt(Hn), "C_im": 1 / math.sqrt(Hn), "D": 1 / math.sqrt(Din),
            "W_hq": 1 / math.sqrt(Hn)}
    for k, std in stds.items():
        a = getattr(p, k)
        assert a.shape == shapes[k]
        assert np.std(a) == pytest.approx(std, rel=0.03) and abs(np.mean(a)) < 0.05 * std
    assert np.all(p.b_q == 0)


def test_gamma_normalizes_the_input_and_is_unused_without_it():
    """With normalize, h_t = lambda h_{t-1} + gamma (x_t B); without, gamma = 1 whatever
    gamma_log holds (so gamma_log gets no gradient)."""
    x_1 = batches(3)[0][0, :, 0]
    for normalize in (True, False):
        p = one(nets(3, np.float64, normalize=normalize), 0)
        h = first_step(normalize)(p, x_1)[0].h  # h_1 = gamma (x_1 B)
        gamma = np.exp(p.gamma_log) if normalize else 1.0
        np.testing.assert_allclose(h, gamma * (p.B_re[x_1] + 1j * p.B_im[x_1]), rtol=1e-12)
        # another gamma_log changes h_1 with the normalization, and nothing without it
        h2 = first_step(normalize)(p._replace(gamma_log=p.gamma_log + 1), x_1)[0].h
        if normalize:
            assert np.all(gamma < 1)
            np.testing.assert_allclose(h2, np.e * np.asarray(h), rtol=1e-12)
        else:
            assert np.all(p.gamma_log == 0)
            np.testing.assert_array_equal(h, h2)


@pytest.mark.parametrize("r,dtype,kind,tol", [
    (0.5, jnp.float64, "tokens", 1e-10), (0.99, jnp.float64, "tokens", 1e-10),
    (1.0, jnp.float64, "tokens", 1e-10), (0.9, jnp.float32, "regression", 1e-5)])
@pytest.mark.e2e
def test_equal_radii_give_exactly_log10_r_per_step_back(r, dtype, kind, tol):
    """r_min = r_max = r, loss at the last step: dL/dh_t = dL/dh_T lambda^(T - t), so
    ||dL/dh_t|| = r^(T - t) ||dL/dh_T||, and the theory's prediction is the measured slope
    (with the targets, and, in float64, without them)."""
    ps = nets(4, dtype, r, r, Q=1 if kind == "regression" else Q)
    x, y = batches(4, kind)
    res = probe("last", kind)(ps, x, y)
    g = 10.0 ** np.asarray(res.log10_grad_norm, np.float64)
    r_exact = np.exp(-np.exp(np.asarray(ps.nu_log, np.float64)))[:, :1]  # |lambda| as stored
    np.testing.assert_allclose(g, g[:, -1:] * r_exact ** (T - np.arange(1, T + 1)),
                               rtol=100 * tol)
    measured = float(np.median([log10_slope(gs)[0] for gs in g]))
    with_targets = {"y": y, "kind": kind, "loss_at": "last"}
    for targets in ({}, with_targets) if dtype == jnp.float64 else (with_targets,):
        th = theory(None, ps, x, measured, **targets, r_min=r, r_max=r, normalize=True)
        assert th["prediction"] == "exact (LRU)"
        assert th["predicted_log10_slope_per_step_back"] == pytest.approx(measured, abs=tol)
        assert th["predicted_log10_slope_per_step_back"] == pytest.approx(math.log10(r),
                                                                          abs=tol)
        assert th["r"] == r and th["inverse_one_minus_r"] == (None if r == 1 else 1 / (1 - r))


def test_exact_profile_is_the_weighted_mix():
    """r_min < r_max: the measured profile equals sqrt(sum_k w_k |lambda_k|^(2 (T - t))) with
    w_k = sum_b |dL/dh_T,k|^2, at every t, and the predicted slope is the measured one."""
    ps = nets(5, np.float64, 0.3, 0.97)
    x, y = batches(5)
    res = probe("last")(ps, x, y)
    th = theory(None, ps, x, 0.0, y=y, kind="tokens", loss_at="last", r_min=0.3, r_max=0.97)
    terms, _ = _seed_terms(True, "tokens", "last")(ps, x, y)
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


def test_fitted_slope_is_the_headlines_rule():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 17, 64):
        for _ in range(5):
            g = 10.0 ** rng.normal(0, 3, n)
            g[rng.random(n) < 0.15] = 0.0  # underflowed steps
            g[rng.random(n) < 0.05] = np.inf
            want = log10_slope(g)[0]
            with np.errstate(divide="ignore"):
                got = fitted_log10_slope(np.log10(g))
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want,
                                                                                 abs=1e-12)


@pytest.mark.parametrize("kind,loss_at,normalize", CASES)
def test_lambda_gradient_against_numpy(kind, loss_at, normalize):
    """dL/dlambda (gamma held fixed), its chain rule to nu_log and theta_log, and the
    sensitivity RMS |dh_T/dlambda|, against the numpy BPTT on every seed; and the reference's
    own gradients against central differences of its loss (in lambda itself, and in nu_log and
    theta_log), so that the two cannot share a convention for complex gradients."""
    ps = nets(6, np.float64, normalize=normalize, Q=1 if kind == "regression" else Q)
    x, y = batches(6, kind)
    terms, (g_nu, g_theta) = _seed_terms(normalize, kind, loss_at)(ps, x, y)
    for s in range(SEEDS):
        p, xs, ys = one(ps, s)._asdict(), x[s], y[s]
        ref = lru_bptt(p, xs, ys, loss_at, normalize, kind)
        np.testing.assert_allclose(terms.lambda_grad[s], ref["G_lambda"], rtol=1e-9)
        np.testing.assert_allclose(g_nu[s], ref["d_nu"].sum(0), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(g_theta[s], ref["d_theta"].sum(0), rtol=1e-9, atol=1e-15)
        want_sens = np.sqrt(np.mean(np.abs(ref["dhT_dlambda"]) ** 2))
        assert float(terms.sensitivity_rms[s]) == pytest.approx(want_sens, rel=1e-10)
        assert np.abs(ref["G_lambda"]).min() > 0 and want_sens > 0
    # the reference against central differences, on the last seed
    eps = 1e-6

    def fd(f, v, step):  # central difference of f at v along step
        return (f(v + step) - f(v - step)) / (2 * eps)

    def loss_lam(lam):
        return lru_bptt(p, xs, ys, loss_at, normalize, kind, lam=lam)["loss"]

    def loss_p(k):
        return lambda v: lru_bptt({**p, k: v}, xs, ys, loss_at, normalize, kind)["loss"]

    for k in range(H):
        e = eps * np.eye(H)[k]
        want = fd(loss_lam, ref["lam"], e) + 1j * fd(loss_lam, ref["lam"], 1j * e)
        assert ref["G_lambda"][k] == pytest.approx(want, rel=1e-6, abs=1e-10)
        assert ref["d_nu"][:, k].sum() == pytest.approx(fd(loss_p("nu_log"), p["nu_log"], e),
                                                        rel=1e-6, abs=1e-10)
        assert ref["d_theta"][:, k].sum() == pytest.approx(
            fd(loss_p("theta_log"), p["theta_log"], e), rel=1e-6, abs=1e-10)


def test_expected_sensitivity_is_the_mean_over_random_tokens():
    """The i.i.d. expectation of |dh_T/dlambda|^2, against the mean over many random token
    sequences (of its closed form sum_j (T - j) lambda^(T-j-1) gamma (x_j B); the lambda scan
    is held to it in test_lambda_gradient_against_numpy); and its limit for T -> infinity
    without a mean drive: gamma^2 sigma^2 (1 + r^2) / (1 - r^2)^3."""
    n = 20000
    p = one(nets(7, np.float64, 0.6, 0.9), 0)
    lam = np.exp(-np.exp(p.nu_log) + 1j * np.exp(p.theta_log))
    x = np.random.default_rng(7).integers(0, D, (n, T))
    drives = np.exp(p.gamma_log) * (p.B_re + 1j * p.B_im)[x]  # (n, T, H)
    j = np.arange(1, T)[:, None]  # steps back from T
    sens = np.einsum("jh,njh->nh", j * lam ** (j - 1), drives[:, ::-1][:, 1:])
    mc = math.sqrt(np.mean(np.abs(sens) ** 2))
    assert mc == pytest.approx(expected_sensitivity(p, T, True), rel=0.02)
    r, rows = 0.95, np.random.default_rng(8).normal(size=(2, 64, 1))
    rows -= rows.mean(axis=1, keepdims=True)
    q = p._replace(nu_log=np.full(1, math.log(-math.log(r))), theta_log=np.full(1, -np.inf),
                   gamma_log=np.zeros(1), B_re=rows[0], B_im=rows[1])
    want = math.sqrt(np.mean(rows[0] ** 2 + rows[1] ** 2) * (1 + r**2) / (1 - r**2) ** 3)
    assert expected_sensitivity(q, 2000, False) == pytest.approx(want, rel=1e-9)


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


@pytest.mark.e2e
def test_job_writes_the_lru_files(tmp_path):
    """One in-process job (r_min < r_max, the general case): params.npz holds the LRU's fields
    with a leading seed axis; the grad_norm column is the numpy BPTT's; summary.json holds the
    exact prediction (equal to the measured slope) and the gradients with respect to lambda,
    nu_log and theta_log, each the numpy BPTT's."""
    S, Hs, Ts, V = 2, 6, 16, 28
    cfg = validate(compose_lru([f"seeds={S}", f"hidden_size={Hs}", f"seq_len={Ts}",
                                "batch_size=3", "probe.loss_at=last", "cell.r_min=0.6",
                                "cell.r_max=0.95", "dtype=float64"]))
    summary = run_job(cfg, tmp_path)
    params = dict(np.load(tmp_path / "params.npz"))
    shapes = {"nu_log": (S, Hs), "theta_log": (S, Hs), "gamma_log": (S, Hs),
              "B_re": (S, V, Hs), "B_im": (S, V, Hs), "C_re": (S, Hs, Hs), "C_im": (S, Hs, Hs),
              "D": (S, V, Hs), "W_hq": (S, Hs, V), "b_q": (S, V)}
    assert set(params) == set(LRUParams._fields)
    assert {k: v.shape for k, v in params.items()} == shapes
    df = pd.read_parquet(tmp_path / "grad_norms.parquet")
    assert {"seed", "t", "grad_norm", "param_grad_norm", "underflow", "overflow"} <= set(df)
    assert (df.cell == "lru").all() and len(df) == S * Ts
    batch = np.load(tmp_path / "batch.npz")
    refs = [lru_bptt({k: v[s] for k, v in params.items()}, batch["x"][s], batch["y"][s], "last")
            for s in range(S)]
    for s, ref in enumerate(refs):
        want = np.sqrt(np.sum(np.abs(ref["G"]) ** 2, axis=(1, 2)))
        got = df[df.seed == s].sort_values("t").grad_norm.to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9)
    h = summary["headline"]
    th = json.loads((tmp_path / "summary.json").read_text())["headline"]["theory"]
    assert summary["status"] == "ok" and th["prediction"] == "exact (LRU)"
    # the general case's prediction needs the targets: it reached the theory
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(
        h["log10_slope_per_step_back"], abs=1e-10)
    assert th["r"] is None and th["inverse_one_minus_r"] is None
    for name, want in [("lambda_grad_norm", [np.linalg.norm(r["G_lambda"]) for r in refs]),
                       ("nu_log_grad_norm", [np.linalg.norm(r["d_nu"].sum(0)) for r in refs]),
                       ("theta_log_grad_norm",
                        [np.linalg.norm(r["d_theta"].sum(0)) for r in refs])]:
        assert th[name] == pytest.approx(np.median(want), rel=1e-9), name
    np.testing.assert_allclose(th["lambda_grad_norm_per_seed"],
                               [np.linalg.norm(r["G_lambda"]) for r in refs], rtol=1e-9)
    assert th["state_lambda_sensitivity"] == pytest.approx(np.median(
        [np.sqrt(np.mean(np.abs(r["dhT_dlambda"]) ** 2)) for r in refs]), rel=1e-9)


@pytest.mark.e2e
def test_short_training_lowers_the_loss(key):
    """rnnjax.core.train works on the LRU unchanged: 100 Adam steps teach it to recall the input of
    5 steps back (a linear task: the LRU, linear from input to output, cannot multiply the
    adding problem's value and marker), far below the memoryless baseline, 1, for every seed."""
    cell = lru()
    n, Bt, Tt = 100, 32, 20
    tx = make_optimizer("adam", 1e-2, None)
    state = jax.jit(jax.vmap(lambda k: init_state(cell.init(k, 2, 16, 1, jnp.float32), tx)))(
        jax.random.split(key, 2))

    def train_batch(k, i):
        x = jax.random.normal(jax.random.fold_in(k, i), (Bt, Tt, 2), jnp.float32)
        return x, x[:, Tt - 5, 0], jnp.ones((Bt,), jnp.float32)

    chunk = make_train_chunk(Training(cell, "last", "regression", tx, train_batch, n, n))
    state, m = jax.jit(jax.vmap(chunk, (0, None, None)))(state, jax.random.fold_in(key, 1),
                                                          jnp.asarray(0))
    loss = np.asarray(m.loss)  # (S, n)
    assert np.isfinite(loss).all() and bool(state.alive.all())
    assert np.all(loss[:, -10:].mean(1) < 0.1)
    assert CELLS["lru"].build is lru
