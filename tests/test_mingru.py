"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): the probe against an independent
float64 numpy BPTT written from the paper's equations (direct and log-space forms), the
log-space forward against the direct form with g, the exact gradient profile of its theory,
its initialization, options and cost, and one job through the Hydra app.

The compiled probes are built once per setting for the whole file (`probe`) and every test
uses the same sizes, so that the file compiles each probe once."""

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
from numpy_minrnn import inputs_of, loss_and_dO, np_g, np_sigmoid

from rnnjax.app.config import register_configs
from rnnjax.app.results import log10_slope
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS, registry, unroll
from rnnjax.core.cells.mingru import (
    MinGRUParams,
    g,
    init_params,
    log_g,
    mingru,
    seed_terms,
    theory,
)
from rnnjax.core.probes import make_probe

register_configs()
# input width, units, outputs (all different, so a transposed matrix cannot pass), batch,
# steps, networks
D, H, Q, B, T = 5, 4, 3, 3, 12
SEEDS = 2


# ----------------------------------------------------------------------------- numpy reference


def forward(p, x, log_space):
    """The paper's equations, a Python loop over time: (h (T + 1, B, H) with h[0] = h_0, z,
    1 - z, candidate h~ (g applied in the log-space form), the inputs)."""
    X = inputs_of(x, p["W_xz"].shape[0])
    k = X @ p["W_xz"] + p["b_z"]
    z, keep = np_sigmoid(k), np_sigmoid(-k)  # (T, B, H); 1 - z without its cancellation
    a = X @ p["W_xh"] + p["b_h"]
    cand = np_g(a) if log_space else a
    h = np.zeros((len(X) + 1, X.shape[1], p["b_h"].shape[0]))
    h[0] = 0.5 if log_space else 0.0  # the log-space form: h_0 = g(0)
    for t in range(len(X)):
        h[t + 1] = keep[t] * h[t] + z[t] * cand[t]
    return h, z, keep, cand, X


def mingru_bptt(p, x, y, loss_at, log_space, kind="tokens"):
    """loss, grad_norm (T,) = ||dL/dh_t||, param_grad_norm (T,) = the norm of step t's share
    of (dL/dW_xz, dL/db_z), the full gradients of W_xz and b_z, and the states."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h, z, keep, cand, X = forward(p, x, log_space)
    loss, dO = loss_and_dO(h[1:], p["W_hq"], p["b_q"], y, loss_at, kind)
    T_ = len(X)
    gn, pgn = np.zeros(T_), np.zeros(T_)
    grads = {"W_xz": 0.0, "b_z": 0.0}
    nxt = np.zeros_like(h[0])
    for t in reversed(range(T_)):
        dh = dO[t] @ p["W_hq"].T + nxt
        gn[t] = np.linalg.norm(dh)
        dk = dh * (cand[t] - h[t]) * z[t] * keep[t]  # through z_t = sigmoid(k_t)
        share = {"W_xz": X[t].T @ dk, "b_z": dk.sum(0)}
        pgn[t] = math.sqrt(sum(np.sum(v**2) for v in share.values()))
        grads = {k: grads[k] + share[k] for k in grads}
        nxt = dh * keep[t]
    return {"loss": loss, "gn": gn, "pgn": pgn, "grads": grads, "h": h}


# ----------------------------------------------------------------------------- fixtures


def nets(seed, Q_=Q, scale=1.0):
    """SEEDS networks (leading axis) in numpy float64, gates spread over (0, 1) and non-zero
    biases, so that every term matters."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=1.0):
        return rng.normal(0, std, (SEEDS, *shape))

    return MinGRUParams(W_xz=scale * normal(D, H), b_z=scale * normal(H, std=0.5),
                        W_xh=scale * normal(D, H), b_h=scale * normal(H, std=0.5),
                        W_hq=normal(H, Q_, std=1 / math.sqrt(H)), b_q=normal(Q_, std=0.3))


def batches(seed, kind="tokens"):
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return (rng.integers(0, D, (SEEDS, B, T)).astype(np.int32),
                rng.integers(0, Q, (SEEDS, B, T)).astype(np.int32))
    return rng.normal(size=(SEEDS, B, T, D)), rng.normal(size=(SEEDS, B))


def probe(log_space, loss_at, kind="tokens"):
    """The probe of every seed at once, compiled once per setting for the whole file."""
    return _probe(log_space, loss_at, kind)  # one cache entry whichever arguments are defaulted


@functools.cache
def _probe(log_space, loss_at, kind):
    return jax.jit(jax.vmap(make_probe(mingru(log_space), loss_at, kind)))


def one(tree, s):
    return {k: np.asarray(v[s]) for k, v in tree._asdict().items()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("log_space,kind,loss_at", [
    (False, "tokens", "last"), (True, "tokens", "last"),
    pytest.param(True, "tokens", "all", marks=pytest.mark.e2e),
    pytest.param(False, "regression", "last", marks=pytest.mark.e2e)])
def test_probe_matches_numpy_bptt(log_space, kind, loss_at):
    """grad_norm and param_grad_norm (W_xz, b_z: step t's share) at every t, and the loss,
    against the numpy BPTT, float64, every seed; the log-space probe against the direct form
    with g (the two are one function)."""
    ps = nets(1, Q_=1 if kind == "regression" else Q)
    x, y = batches(1, kind)
    res = probe(log_space, loss_at, kind)(ps, x, y)
    assert res.log10_grad_norm.dtype == jnp.float64
    assert not np.asarray(res.overflow).any() and not np.asarray(res.forward_overflow_t).any()
    for s in range(SEEDS):
        ref = mingru_bptt(one(ps, s), x[s], y[s], loss_at, log_space, kind)
        np.testing.assert_allclose(float(res.loss[s]), ref["loss"], rtol=1e-10)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_grad_norm[s]), ref["gn"],
                                   rtol=1e-9)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_param_grad_norm[s]),
                                   ref["pgn"], rtol=1e-9)
        assert ref["gn"].min() > 0 and ref["pgn"].min() > 0  # a comparison that can fail
        if loss_at == "last":  # the profile decays going back
            assert ref["gn"][0] < 0.1 * ref["gn"][-1]


def test_numpy_reference_agrees_with_central_differences():
    """The reference's own gradient of b_z and W_xz (the sum of the steps' shares) against
    central differences of its loss, so that it is checked on its own, not only against the
    probe."""
    p, (x, y) = one(nets(2), 0), batches(2)
    x, y = x[0], y[0]
    for log_space in (False, True):
        ref = mingru_bptt(p, x, y, "all", log_space)
        eps = 1e-6
        for name, idx in (("b_z", (1,)), ("W_xz", (2, 3))):
            e = np.zeros_like(p[name])
            e[idx] = eps
            lo = mingru_bptt({**p, name: p[name] - e}, x, y, "all", log_space)["loss"]
            hi = mingru_bptt({**p, name: p[name] + e}, x, y, "all", log_space)["loss"]
            assert ref["grads"][name][idx] == pytest.approx((hi - lo) / (2 * eps), rel=1e-6)


@functools.cache
def log_space_states():
    """(params, tokens, real inputs) -> the log-space cell's states h_1..h_T (T, B, H) of
    `unroll` for each, one compiled program."""
    cell = mingru(log_space=True)
    return jax.jit(lambda p, xt, xr: (unroll(cell, p, xt)[0], unroll(cell, p, xr)[0]))


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_log_space_forward_is_the_direct_form_with_g(scale):
    """log h_t = logaddexp(log(1 - z_t) + log h_{t-1}, log z_t + log g(h~_t)) gives the h_t of
    (1 - z_t) h_{t-1} + z_t g(h~_t) from h_0 = g(0), to rtol 1e-12 (float64), for tokens and
    real inputs, also with drives beyond +-30 where z_t rounds to 0 or 1."""
    ps = nets(3, scale=scale)
    p = {k: v[0] for k, v in ps._asdict().items()}
    x = [batches(3, kind)[0][0] for kind in ("tokens", "regression")]
    got = log_space_states()(MinGRUParams(**p), *x)
    for got_k, x_k in zip(got, x, strict=True):
        want = forward(p, x_k, True)[0][1:]
        np.testing.assert_allclose(np.asarray(got_k), want, rtol=1e-12, atol=0)
        assert np.asarray(got_k).min() > 0
    assert (np.abs(p["W_xz"]).max() > 30) == (scale > 1)  # the large drives were reached


def test_g_and_its_log():
    """g(a) = a + 1/2 (a >= 0), sigmoid(a) (a < 0): positive, continuous at 0; log_g is its
    log, computed without the log of a rounded sigmoid (finite at a = -800)."""
    a = np.array([-800.0, -30.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 3.0, 1e6])
    got, logs = jax.jit(lambda a: (g(a), log_g(a)))(a)
    np.testing.assert_allclose(got, np_g(a), rtol=1e-14)
    np.testing.assert_allclose(logs[1:], np.log(np_g(a[1:])), rtol=1e-13)
    assert float(logs[0]) == -800.0 and float(got[4]) == 0.5
    assert np.all(np.asarray(got)[1:] > 0)


@pytest.mark.parametrize("log_space", [False, True])
def test_theory_is_the_exact_profile(log_space):
    """Loss at the last step: the measured ||dL/dh_t|| equals the theory's exact profile
    ||dL/dh_T * prod_{s>t} (1 - z_s)|| at every t (rtol 1e-10), and the predicted slope is the
    measured one, per seed and as the median; the gate's statistics are the batch's."""
    ps = nets(4)
    x, y = batches(4)
    res = probe(log_space, "last")(ps, x, y)
    measured = np.asarray(res.log10_grad_norm, np.float64)
    profile, _, log_keep = seed_terms(log_space, "tokens", "last")(ps, x, y)
    np.testing.assert_allclose(10.0 ** measured, 10.0 ** np.asarray(profile), rtol=1e-10)
    slopes = [log10_slope(10.0 ** m)[0] for m in measured]
    th = theory(None, ps, x, float(np.median(slopes)), y=y, kind="tokens", loss_at="last",
                log_space=log_space)
    assert th["prediction"] == "exact (minGRU)" and th["log_space"] is log_space
    np.testing.assert_allclose(th["predicted_log10_slope_per_seed"], slopes, rtol=0, atol=1e-10)
    assert th["measured_minus_predicted"] == pytest.approx(0, abs=1e-10)
    assert th["predicted_log10_slope_per_step_back"] < -0.1  # a decay, not a flat profile
    # the gates: 1 - z_t from the numpy forward
    keep = np.stack([forward(one(ps, s), x[s], log_space)[2] for s in range(SEEDS)])
    np.testing.assert_allclose(np.exp(np.asarray(log_keep)), keep, rtol=1e-12)
    assert th["gate_mean"] == pytest.approx(np.median(keep.mean(axis=(1, 2, 3))), rel=1e-12)
    assert th["gate_log10_geometric_mean"] == pytest.approx(
        np.median(np.log10(keep).mean(axis=(1, 2, 3))), rel=1e-12)
    if not log_space:  # without the targets: the gates only, no prediction
        bare = theory(None, ps, x, 0.0, log_space=log_space)
        assert bare["prediction"] is None and bare["predicted_log10_slope_per_step_back"] is None
        assert bare["gate_mean"] == th["gate_mean"]


def test_theory_fits_the_steps_the_measurement_can_see():
    """An update gate of 1 - e^-70 (b_z = 70, W_xz = 0): ||dL/dh_t|| falls 30 decades a step and
    underflows to 0 at the first steps (float64). The exact profile stays finite (it is
    computed in logs), but the theory leaves out the steps where every entry of dL/dh_t is
    below the smallest normal number, so its fit and the headline's use the same steps and
    the slopes agree (-70 / ln 10 per step)."""
    ps = nets(6)._replace(W_xz=np.zeros((SEEDS, D, H)), b_z=np.full((SEEDS, H), 70.0))
    x, y = batches(6)
    res = probe(False, "last")(ps, x, y)
    measured = 10.0 ** np.asarray(res.log10_grad_norm, np.float64)
    profile, largest, _ = seed_terms(False, "tokens", "last")(ps, x, y)
    for s in range(SEEDS):
        gone = measured[s] == 0
        assert 0 < gone.sum() < T - 4 and np.all(np.isfinite(profile[s]))
        np.testing.assert_array_equal(gone, np.asarray(largest[s]) < math.log10(
            np.finfo(np.float64).tiny))
        np.testing.assert_allclose(measured[s][~gone][1:], 10.0 ** np.asarray(profile[s])[
            ~gone][1:], rtol=1e-10)  # (the first step seen may have lost some entries)
    slopes = [log10_slope(m)[0] for m in measured]
    th = theory(None, ps, x, float(np.median(slopes)), y=y, kind="tokens", loss_at="last")
    np.testing.assert_allclose(th["predicted_log10_slope_per_seed"], slopes, rtol=1e-10)
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(-70 / math.log(10),
                                                                      rel=1e-10)


def test_initialization_is_nn_linears_default(key):
    """Every weight and bias U[-1/sqrt(fan_in), +]: fan_in D for the gate and candidate, H
    for the read-out; deterministic, in the dtype asked for."""
    Din, Hn, Qn = 40, 200, 30
    init = jax.jit(init_params, static_argnums=(1, 2, 3, 4))
    p = init(key, Din, Hn, Qn, jnp.float64)
    fans = {"W_xz": Din, "b_z": Din, "W_xh": Din, "b_h": Din, "W_hq": Hn, "b_q": Hn}
    shapes = {"W_xz": (Din, Hn), "b_z": (Hn,), "W_xh": (Din, Hn), "b_h": (Hn,),
              "W_hq": (Hn, Qn), "b_q": (Qn,)}
    for k, fan in fans.items():
        a = np.asarray(getattr(p, k))
        bound = 1 / math.sqrt(fan)
        assert a.shape == shapes[k] and a.dtype == np.float64, k
        assert np.abs(a).max() <= bound, k
        if a.size > 1000:
            assert np.std(a) == pytest.approx(bound / math.sqrt(3), rel=0.05), k
            assert np.abs(a).max() > 0.95 * bound, k
    assert not np.allclose(p.W_xz, p.W_xh)
    assert CELLS["mingru"].build is mingru


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=["cell=mingru", *overrides]))


@pytest.mark.parametrize("overrides,message", [
    (["activation=relu"], "activation=relu does not apply to cell=mingru; allowed: tanh"),
    pytest.param(["init=orthogonal"], "init=orthogonal does not apply to cell=mingru; allowed: "
                 "normal", marks=pytest.mark.e2e),
    pytest.param(["+cell.forget_bias=1"], "cell.forget_bias is not an option of cell=mingru",
                 marks=pytest.mark.e2e),
])
def test_bad_options_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_cfg(overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_options_label_and_cost():
    """cell.log_space is a typed record; the label says the form; cost is what autodiff saves
    per step and sequence (measured as tests/test_cells.py measures the other cells')."""
    from jax._src.ad_checkpoint import saved_residuals

    assert compose_cfg(["cell.log_space=true"]).cell.log_space is True
    assert registry.defaults("mingru") == {"log_space": False}
    assert registry.label("mingru", {}) == "" and registry.label(
        "mingru", {"log_space": True}) == "log space"
    opt = CELLS["mingru"].options["log_space"]
    assert opt.type is bool and opt.help

    def saved(cell, params, B):
        s = jnp.asarray(np.full((B, H), 0.6))
        res = saved_residuals(lambda p, s: cell.step(p, s, jnp.zeros((B,), jnp.int32)),
                              params, s)
        return sum(a.size for a, _ in res if jnp.issubdtype(a.dtype, jnp.inexact))

    params = MinGRUParams(**{k: jnp.asarray(v[0]) for k, v in nets(5)._asdict().items()})
    for log_space in (False, True):
        cell = mingru(log_space)
        per_sequence = saved(cell, params, 2) - saved(cell, params, 1)
        assert registry.cost("mingru", {"log_space": log_space}, H) == per_sequence


@pytest.mark.e2e
def test_job_through_the_app(tmp_path, app):
    """`rnnjax run cell=mingru cell.log_space=true` in-process: params.npz holds the minGRU's
    fields with a seed axis, grad_norms.parquet the numpy BPTT's norms, and summary.json the
    exact prediction beside the measured slope (equal to 1e-10), which the log line shows."""
    S, Hs, Ts, V = 2, 4, 10, 6
    job = tmp_path / "job"
    r = app(f"hydra.run.dir={job}", "cell=mingru", "cell.log_space=true", "dtype=float64",
            f"seeds={S}", f"hidden_size={Hs}", f"seq_len={Ts}", "batch_size=3",
            f"task.vocab_size={V}", "probe.loss_at=last")
    assert r.code == 0, r.err
    params = dict(np.load(job / "params.npz"))
    assert {k: v.shape for k, v in params.items()} == {
        "W_xz": (S, V, Hs), "b_z": (S, Hs), "W_xh": (S, V, Hs), "b_h": (S, Hs),
        "W_hq": (S, Hs, V), "b_q": (S, V)}
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.cell == "mingru").all() and len(df) == S * Ts
    batch = np.load(job / "batch.npz")
    for s in range(S):
        ref = mingru_bptt({k: v[s] for k, v in params.items()}, batch["x"][s], batch["y"][s],
                          "last", True)
        rows = df[df.seed == s].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, ref["gn"], rtol=1e-9)
        np.testing.assert_allclose(rows.param_grad_norm, ref["pgn"], rtol=1e-9)
    summary = json.loads((job / "summary.json").read_text())
    h = summary["headline"]
    th = h["theory"]
    assert summary["status"] == "ok" and summary["cell_label"] == "log space"
    assert th["prediction"] == "exact (minGRU)" and th["log_space"] is True and th["applies"]
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(
        h["log10_slope_per_step_back"], abs=1e-10)
    assert th["measured_log10_slope_per_step_back"] == h["log10_slope_per_step_back"]
    assert "exact (minGRU)" in r.out  # the log line, beside the measured slope
