"""S6 (Gu & Dao 2023, Mamba's selective SSM): the probe against an independent float64 numpy
BPTT written from the equations (tests/numpy_s6.py), the cell's linear form against its step,
the exact gradient profile of its theory, Mamba's initialization, options, label and cost, and
one job through the Hydra app.

The compiled probes are built once per setting for the whole file (`probe`) and every test
uses the same sizes and one cell (the options N and expand only shape the parameters), so that
the file compiles each probe once."""

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
from numpy_s6 import forward, np_softplus, s6_bptt

from rnnjax.app.config import register_configs
from rnnjax.app.results import log10_slope
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS, registry
from rnnjax.core.cells.s6 import S6Options, S6Params, S6State, init_params, s6, seed_terms, theory
from rnnjax.core.probes import make_probe

register_configs()
# input width, model width, outputs, batch, steps, networks, states per channel, channels (all
# different, so a transposed matrix cannot pass)
D, H, Q, B, T = 5, 4, 3, 3, 12
SEEDS, N, E = 2, 3, 8  # E = expand * H with expand = 2
CELL = s6()


def nets(seed, Q_=Q):
    """SEEDS networks (leading axis) in numpy float64, step sizes spread over (0.1, 3), A_log and
    D off their initial values and non-zero biases, so that every term matters."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=1.0, mean=0.0):
        return rng.normal(mean, std, (SEEDS, *shape))

    return S6Params(
        W_in=normal(D, E), b_in=normal(E, std=0.5),
        W_delta=normal(E, E, std=0.5 / math.sqrt(E)), b_delta=normal(E, std=0.5),
        W_B=normal(E, N, std=1 / math.sqrt(E)), W_C=normal(E, N, std=1 / math.sqrt(E)),
        A_log=np.log(np.arange(1, N + 1)) + normal(E, N, std=0.3), D=normal(E, mean=1, std=0.3),
        W_hq=normal(E, Q_, std=1 / math.sqrt(E)), b_q=normal(Q_, std=0.3))


def batches(seed, kind="tokens"):
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return (rng.integers(0, D, (SEEDS, B, T)).astype(np.int32),
                rng.integers(0, Q, (SEEDS, B, T)).astype(np.int32))
    return rng.normal(size=(SEEDS, B, T, D)), rng.normal(size=(SEEDS, B))


def probe(loss_at, kind="tokens"):
    """The probe of every seed at once, compiled once per setting for the whole file."""
    return _probe(loss_at, kind)  # one cache entry whichever arguments are defaulted


@functools.cache
def _probe(loss_at, kind):
    return jax.jit(jax.vmap(make_probe(CELL, loss_at, kind)))


def one(tree, s):
    return {k: np.asarray(v[s]) for k, v in tree._asdict().items()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind,loss_at", [
    ("tokens", "last"), ("tokens", "all"),
    pytest.param("regression", "last", marks=pytest.mark.e2e)])
def test_probe_matches_numpy_bptt(kind, loss_at):
    """grad_norm (||dL/dh_t|| over (B, E, N)) and param_grad_norm (W_delta, b_delta, A_log:
    step t's share) at every t, and the loss, against the numpy BPTT, float64, every seed."""
    ps = nets(1, Q_=1 if kind == "regression" else Q)
    x, y = batches(1, kind)
    res = probe(loss_at, kind)(ps, x, y)
    assert res.log10_grad_norm.dtype == jnp.float64
    assert not np.asarray(res.overflow).any() and not np.asarray(res.forward_overflow_t).any()
    for s in range(SEEDS):
        ref = s6_bptt(one(ps, s), x[s], y[s], loss_at, kind)
        np.testing.assert_allclose(float(res.loss[s]), ref["loss"], rtol=1e-10)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_grad_norm[s]), ref["gn"],
                                   rtol=1e-9)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_param_grad_norm[s]),
                                   ref["pgn"], rtol=1e-9)
        assert ref["gn"].min() > 0 and ref["pgn"].min() > 0  # a comparison that can fail
        if loss_at == "last":  # the profile decays going back
            assert ref["gn"][0] < 0.1 * ref["gn"][-1]


def test_numpy_reference_agrees_with_central_differences():
    """The reference's own gradient of W_delta, b_delta and A_log (the sum of the steps'
    shares) against central differences of its loss, so that it is checked on its own, not only
    against the probe."""
    p, (x, y) = one(nets(2), 0), batches(2)
    x, y = x[0], y[0]
    ref = s6_bptt(p, x, y, "all")
    eps = 1e-6
    for name, idx in (("b_delta", (1,)), ("W_delta", (2, 5)), ("A_log", (3, 2))):
        e = np.zeros_like(p[name])
        e[idx] = eps
        lo = s6_bptt({**p, name: p[name] - e}, x, y, "all")["loss"]
        hi = s6_bptt({**p, name: p[name] + e}, x, y, "all")["loss"]
        assert ref["grads"][name][idx] == pytest.approx((hi - lo) / (2 * eps), rel=1e-6)


@functools.cache
def linear_and_step():
    """(params, state, tokens, real inputs) -> for each input: (linear's (a, b), step), one
    compiled program."""
    def both(p, s, x_t):
        return CELL.linear(p, x_t), CELL.step(p, s, x_t)

    return jax.jit(lambda p, s, xt, xr: (both(p, s, xt), both(p, s, xr)))


def test_linear_form_is_the_step():
    """a_t * s + b_t == step(params, s, x_t) leaf by leaf from a random state (h, skip and C
    all non-zero): a = (exp(Delta A), 0, 0), b = (Delta B u, D u, C); the states agree with the
    numpy forward's h_1, D u_1 and C_1 from h_0 = s.h, for tokens and real inputs."""
    rng = np.random.default_rng(7)
    p = S6Params(**one(nets(7), 0))
    state = S6State(h=rng.normal(size=(B, E, N)), skip=rng.normal(size=(B, E)),
                    C=rng.normal(size=(B, N)))
    x = [batches(7, kind)[0][0][:, 0] for kind in ("tokens", "regression")]
    for ((a, b), stepped), x_t in zip(linear_and_step()(p, state, *x), x, strict=True):
        for name in S6State._fields:
            got = getattr(a, name) * getattr(state, name) + getattr(b, name)
            np.testing.assert_allclose(got, getattr(stepped, name), rtol=1e-13, atol=1e-15)
        assert not np.any(a.skip) and not np.any(a.C)
        f = forward(p._asdict(), x_t[:, None])  # one step from h_0 = 0 gives b's h; then s.h
        want_h = f["keep"][0] * state.h + f["h"][1]
        np.testing.assert_allclose(stepped.h, want_h, rtol=1e-12)
        np.testing.assert_allclose(stepped.skip, p.D * f["u"][0], rtol=1e-13)
        np.testing.assert_allclose(stepped.C, f["Cm"][0], rtol=1e-13)


def test_theory_is_the_exact_profile():
    """Loss at the last step: the measured ||dL/dh_t|| equals the theory's exact profile
    ||dL/dh_T * prod_{s>t} exp(Delta_s A)|| at every t (rtol 1e-10), and the predicted slope is
    the measured one, per seed and as the median; the gate's statistics are the batch's
    exp(Delta A) from the numpy forward."""
    ps = nets(4)
    x, y = batches(4)
    res = probe("last")(ps, x, y)
    measured = np.asarray(res.log10_grad_norm, np.float64)
    profile, _, log_keep = seed_terms(False, "tokens", "last")(ps, x, y)
    np.testing.assert_allclose(10.0 ** measured, 10.0 ** np.asarray(profile), rtol=1e-10)
    slopes = [log10_slope(10.0 ** m)[0] for m in measured]
    th = theory(None, ps, x, float(np.median(slopes)), y=y, kind="tokens", loss_at="last",
                **registry.defaults("s6"))
    assert th["prediction"] == "exact (S6)" and th["gate"].startswith("exp(Δ A)")
    np.testing.assert_allclose(th["predicted_log10_slope_per_seed"], slopes, rtol=0, atol=1e-10)
    assert th["measured_minus_predicted"] == pytest.approx(0, abs=1e-10)
    assert th["predicted_log10_slope_per_step_back"] < -0.1  # a decay, not a flat profile
    keep = np.stack([forward(one(ps, s), x[s])["keep"] for s in range(SEEDS)])  # (S,T,B,E,N)
    assert np.asarray(log_keep).shape == keep.shape
    np.testing.assert_allclose(np.exp(np.asarray(log_keep)), keep, rtol=1e-12)
    assert th["gate_mean"] == pytest.approx(np.median(keep.mean(axis=(1, 2, 3, 4))), rel=1e-12)
    assert th["gate_log10_geometric_mean"] == pytest.approx(
        np.median(np.log10(keep).mean(axis=(1, 2, 3, 4))), rel=1e-12)
    bare = theory(None, ps, x, 0.0)  # without the targets: the gates only, no prediction
    assert bare["prediction"] is None and bare["predicted_log10_slope_per_step_back"] is None
    assert bare["gate_mean"] == th["gate_mean"]


def test_initialization_is_mambas(key):
    """A = -(n + 1) and D = 1; softplus(b_delta) (the step size with W_delta's term aside)
    log-uniform on [dt_min, dt_max], clamped below at 1e-4; W_delta U[+-E^-1/2]; the other
    layers nn.Linear's U[+-1/sqrt(fan_in)] (fan-in D for W_in, b_in, E for the rest);
    deterministic, in the dtype asked for."""
    Din, Hn, Qn, Nn, ex = 40, 100, 30, 16, 2
    En = ex * Hn
    p, low = jax.jit(lambda k: [init_params(k, Din, Hn, Qn, S6Options(Nn, ex, *dt), jnp.float64)
                                for dt in ((0.001, 0.1), (1e-5, 1e-3))])(key)  # one program
    fans = {"W_in": Din, "b_in": Din, "W_delta": En, "W_B": En, "W_C": En, "W_hq": En,
            "b_q": En}
    shapes = {"W_in": (Din, En), "b_in": (En,), "W_delta": (En, En), "b_delta": (En,),
              "W_B": (En, Nn), "W_C": (En, Nn), "A_log": (En, Nn), "D": (En,),
              "W_hq": (En, Qn), "b_q": (Qn,)}
    assert {k: np.shape(v) for k, v in p._asdict().items()} == shapes
    for k, fan in fans.items():
        a = np.asarray(getattr(p, k))
        bound = 1 / math.sqrt(fan)
        assert a.dtype == np.float64 and np.abs(a).max() <= bound, k
        if a.size > 1000:
            assert np.std(a) == pytest.approx(bound / math.sqrt(3), rel=0.05), k
            assert np.abs(a).max() > 0.95 * bound, k
    np.testing.assert_allclose(-np.exp(p.A_log), -np.tile(np.arange(1, Nn + 1), (En, 1)),
                               rtol=1e-15)
    assert np.all(np.asarray(p.D) == 1.0)
    dt = np_softplus(np.asarray(p.b_delta))
    assert dt.min() >= 0.001 * (1 - 1e-12) and dt.max() <= 0.1 * (1 + 1e-12)
    log_dt = np.log10(dt)  # log-uniform on [-3, -1]: mean -2, sd 2/sqrt(12)
    assert log_dt.mean() == pytest.approx(-2, abs=0.1)
    assert log_dt.std() == pytest.approx(2 / math.sqrt(12), rel=0.15)
    # below Mamba's floor: clamped at 1e-4 (a fifth of the log-range lies below it)
    dt = np_softplus(np.asarray(low.b_delta))
    assert dt.min() == pytest.approx(1e-4, rel=1e-12) and np.mean(dt < 1.0001e-4) > 0.2
    # deterministic: the same key draws the same layers whatever the step sizes
    assert np.array_equal(low.W_in, p.W_in) and np.array_equal(low.W_delta, p.W_delta)
    assert CELLS["s6"].build is s6


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=["cell=s6", *overrides]))


@pytest.mark.parametrize("overrides,message", [
    (["cell.N=0"], "cell.N=0 is invalid: must be an integer >= 1"),
    (["cell.dt_min=0.5"], "cell.dt_min=0.5 is invalid: must be <= cell.dt_max=0.1"),
    (["cell.dt_min=0", "cell.dt_max=0"], "cell.dt_min=0.0 is invalid: must be a finite number > 0"),
    (["cell.expand=0"], "cell.expand=0 is invalid: must be an integer >= 1"),
    (["activation=relu"], "activation=relu does not apply to cell=s6; allowed: tanh"),
])
def test_bad_options_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_cfg(overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_options_label_and_cost():
    """The options are typed records with Mamba's defaults; the label names what differs; cost
    is what autodiff saves per step and sequence (measured as tests/test_cells.py measures the
    other cells'), for several N, expand and H."""
    from jax._src.ad_checkpoint import saved_residuals

    cfg = compose_cfg(["cell.N=4", "cell.expand=1", "cell.dt_max=0.01"]).cell
    assert (cfg.N, cfg.expand, cfg.dt_min, cfg.dt_max) == (4, 1, 0.001, 0.01)
    assert registry.defaults("s6") == {"N": 16, "dt_min": 0.001, "dt_max": 0.1, "expand": 2}
    for k, opt in CELLS["s6"].options.items():
        assert opt.help and isinstance(opt.default, opt.type), k
    assert registry.label("s6", {}) == ""
    assert registry.label("s6", {"N": 4, "expand": 1}) == "N=4, expand=1"
    assert registry.label("s6", {"dt_max": 0.01}) == "Δ in [0.001, 0.01]"
    assert registry.label("s6", {"dt_min": 0.01, "dt_max": 0.01}) == "Δ=0.01"

    def saved(cell, params, Bn):
        s = jax.eval_shape(lambda p: cell.initial_state(p, Bn), params)
        res = saved_residuals(lambda p, s: cell.step(p, s, jnp.zeros((Bn,), jnp.int32)),
                              params, s)
        return sum(a.size for a, _ in res if jnp.issubdtype(a.dtype, jnp.inexact))

    for options, Hn in (({}, 8), ({"N": 3, "expand": 1}, 5), ({"N": 5, "expand": 3}, 4)):
        cell = registry.build("s6", options)
        params = jax.eval_shape(lambda k, c=cell, h=Hn: c.init(k, D, h, Q), jax.random.key(0))
        per_sequence = saved(cell, params, 2) - saved(cell, params, 1)
        assert registry.cost("s6", options, Hn) == per_sequence, options


@pytest.mark.e2e
def test_job_through_the_app(tmp_path, app):
    """`rnnjax run cell=s6 cell.N=3` in-process: params.npz holds the S6's fields with a seed
    axis, grad_norms.parquet the numpy BPTT's norms, and summary.json the exact prediction
    beside the measured slope (equal to 1e-10), which the log line shows."""
    S, Ts, V = 2, 10, 6
    job = tmp_path / "job"
    r = app(f"hydra.run.dir={job}", "cell=s6", f"cell.N={N}", "dtype=float64", f"seeds={S}",
            f"hidden_size={H}", f"seq_len={Ts}", "batch_size=3", f"task.vocab_size={V}",
            "probe.loss_at=last")
    assert r.code == 0, r.err
    params = dict(np.load(job / "params.npz"))
    assert {k: v.shape for k, v in params.items()} == {
        "W_in": (S, V, E), "b_in": (S, E), "W_delta": (S, E, E), "b_delta": (S, E),
        "W_B": (S, E, N), "W_C": (S, E, N), "A_log": (S, E, N), "D": (S, E),
        "W_hq": (S, E, V), "b_q": (S, V)}
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.cell == "s6").all() and len(df) == S * Ts
    batch = np.load(job / "batch.npz")
    for s in range(S):
        ref = s6_bptt({k: v[s] for k, v in params.items()}, batch["x"][s], batch["y"][s],
                      "last")
        rows = df[df.seed == s].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, ref["gn"], rtol=1e-9)
        np.testing.assert_allclose(rows.param_grad_norm, ref["pgn"], rtol=1e-9)
    summary = json.loads((job / "summary.json").read_text())
    h = summary["headline"]
    th = h["theory"]
    assert summary["status"] == "ok" and summary["cell_label"] == f"N={N}"
    assert th["prediction"] == "exact (S6)" and th["applies"]
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(
        h["log10_slope_per_step_back"], abs=1e-10)
    assert "exact (S6)" in r.out  # the log line, beside the measured slope
