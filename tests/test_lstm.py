"""d2l's LSTM (d2l 10.1): the probe (grad_norm, param_grad_norm and the cell's total derivative
cell_grad_norm) against an independent numpy BPTT, with and without the peephole; the constant
error carousel; forget_bias; theory, validation and one in-process job."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import references
from conftest import ROOT
from hydra import compose, initialize_config_dir
from numpy_lstm import lstm_bptt

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS, unroll
from rnnjax.core.cells.lstm import LSTMParams, lstm, theory
from rnnjax.core.losses import make_loss
from rnnjax.core.probes import make_probe
from rnnjax.core.tasks import COPY_VOCAB, make_copy_batch
from rnnjax.core.train import Training, init_state, make_optimizer, make_train_chunk

register_configs()
D = V = 7  # vocabulary
H = 5


def random_net(key, peephole=False, dtype=jnp.float64):
    """An LSTM with W_h* ~ N(0, 1.2^2 / H), Glorot inputs, random biases (and a random w_co),
    so that gradients neither vanish nor explode over a few steps and every gate matters."""
    p = lstm(init="gaussian", init_value=1.2, peephole=peephole).init(key, D, H, V, jnp.float64)
    biases = [k for k in p._fields if k.startswith("b_") or (k == "w_co" and peephole)]
    keys = jax.random.split(jax.random.fold_in(key, 1), len(biases))
    p = p._replace(**{b: 0.5 * jax.random.normal(k, getattr(p, b).shape, jnp.float64)
                      for b, k in zip(biases, keys, strict=True)})
    return jax.tree.map(lambda a: a.astype(dtype), p)


def tokens(key, B, T):
    return references.tokens(key, B, T, V)


@functools.cache
def probe(loss_at, peephole):
    return jax.jit(make_probe(lstm(peephole=peephole), loss_at))


def norms(a):
    return 10.0 ** np.asarray(a, np.float64)


def as_dict(p):
    return {k: np.asarray(v, np.float64) for k, v in p._asdict().items() if v is not None}


F64, F32 = (jnp.float64, 1e-8), (jnp.float32, 1e-4)


@pytest.mark.parametrize("loss_at,dtype,rtol,peephole", [
    ("all", *F64, False), pytest.param("last", *F64, False, marks=pytest.mark.slow),
    pytest.param("all", *F32, False, marks=pytest.mark.slow), ("last", *F32, False),
    ("all", *F64, True), ("last", *F32, True)])
@pytest.mark.e2e
def test_probe_matches_numpy_bptt(key, loss_at, dtype, rtol, peephole):
    """grad_norm, cell_grad_norm and param_grad_norm (every W_h*, and w_co with the peephole)
    at every t, on 3 seeds."""
    for seed in range(3):
        k_net, k_tok = jax.random.split(jax.random.fold_in(key, seed))
        p = random_net(k_net, peephole, dtype)
        x, y = tokens(k_tok, 3, 9)
        res = probe(loss_at, peephole)(p, x, y)
        assert res.log10_grad_norm.dtype == dtype and set(res.taps) == {"cell"}
        loss, gn, cgn, pgn, _ = lstm_bptt(as_dict(p), np.asarray(x), np.asarray(y), loss_at)
        np.testing.assert_allclose(res.loss, loss, rtol=rtol)
        np.testing.assert_allclose(norms(res.log10_grad_norm), gn, rtol=rtol)
        np.testing.assert_allclose(norms(res.taps["cell"]), cgn, rtol=rtol)
        np.testing.assert_allclose(norms(res.log10_param_grad_norm), pgn, rtol=rtol)
        assert not res.overflow.any() and int(res.forward_overflow_t) == 0
        assert gn.min() > 0 and cgn.min() > 0 and pgn[1:].min() > 0  # comparisons that can fail
        # dL/dC_t is not dL/dH_t: the carousel is a different quantity
        assert np.abs(np.log10(cgn / gn)).max() > 0.01


def test_numpy_reference_agrees_with_autodiff(key):
    """The reference's full gradients of the W_h* and w_co equal jax.grad of the loss."""
    p = random_net(key, peephole=True)
    x, y = tokens(jax.random.fold_in(key, 2), 4, 6)
    loss = make_loss("tokens", "all")
    cell = lstm(peephole=True)
    grads = jax.jit(jax.grad(lambda q: loss(unroll(cell, q, x)[1], y)))(p)
    _, _, _, _, dW = lstm_bptt(as_dict(p), np.asarray(x), np.asarray(y), "all")
    assert set(dW) == set(cell.recurrent)
    for k, v in dW.items():
        np.testing.assert_allclose(getattr(grads, k), v, rtol=1e-10, atol=1e-15)


def test_constant_error_carousel_decays_by_exactly_the_forget_gate(key):
    """W_h* = 0 and W_xf = 0 with b_f = logit(f): H_{t-1} reaches nothing, so for the loss at
    the last step dL/dH_t = 0 for t < T, and dL/dC_{t-1} = f dL/dC_t exactly: cell_grad_norm
    falls by log10 f per step, the log10 mean forget gate the theory reports."""
    f, T = 0.8, 12
    p = random_net(key)
    p = p._replace(W_hi=0 * p.W_hi, W_hf=0 * p.W_hf, W_ho=0 * p.W_ho, W_hc=0 * p.W_hc,
                   W_xf=0 * p.W_xf, b_f=jnp.full((H,), np.log(f / (1 - f))))
    x, y = tokens(jax.random.fold_in(key, 3), 4, T)
    res = probe("last", False)(p, x, y)
    c = norms(res.taps["cell"])
    np.testing.assert_allclose(c, c[-1] * f ** (T - np.arange(1, T + 1)), rtol=1e-10)
    g = norms(res.log10_grad_norm)
    assert g[-1] > 0 and not g[:-1].any()
    th = theory(lstm(), jax.tree.map(lambda a: a[None], p), x[None], 0.0)
    assert th["gate_log10_mean"] == pytest.approx(np.log10(f), abs=1e-12)


def test_forget_bias_and_peephole_params(key):
    """forget_bias sets every b_f entry and nothing else; the peephole adds w_co (only when on),
    and with w_co = 0 the peephole LSTM computes the plain one."""
    plain = lstm(forget_bias=1.0).init(key, D, H, V, jnp.float64)
    assert type(plain) is LSTMParams and plain.w_co is None and jax.tree.leaves(plain)[-1].shape \
        == (V,)  # w_co: None is no leaf
    np.testing.assert_array_equal(plain.b_f, np.ones(H))
    for b in ("b_i", "b_o", "b_c", "b_q"):
        assert not np.any(getattr(plain, b)), b
    peep = lstm(forget_bias=1.0, peephole=True).init(key, D, H, V, jnp.float64)
    assert type(peep) is LSTMParams and peep.w_co.shape == (H,) and np.any(peep.w_co)
    assert np.std(peep.w_co) < 0.05  # normal: N(0, 0.01^2) like every weight
    x, _ = tokens(key, 3, 6)
    peep_out = jax.jit(lambda q: unroll(lstm(peephole=True), q, x)[1])
    zero = plain._replace(w_co=jnp.zeros(H))
    np.testing.assert_array_equal(peep_out(zero), unroll(lstm(), plain, x)[1])
    p = random_net(key, peephole=True)
    assert not np.allclose(peep_out(p), peep_out(p._replace(w_co=0 * p.w_co)))
    glorot = lstm(init="orthogonal", peephole=True).init(key, D, 128, V, jnp.float64)
    assert np.var(glorot.w_co) == pytest.approx(1 / 128, rel=0.4)
    w = np.asarray(glorot.W_hf)
    np.testing.assert_allclose(w @ w.T, np.eye(128), atol=1e-10)


def test_theory_follows_forget_bias_at_d2l_init(key):
    """d2l's tiny weights: F ~ sigmoid(forget_bias), offered as the predicted slope; with Glorot
    W_h* only the mean gate is reported."""
    x, _ = tokens(key, 8, 20)
    xs = jnp.stack([x, x])
    for init, fb, applies in (("normal", 0.0, True), ("normal", 1.0, True), ("xavier", 1.0, False)):
        c = lstm(init=init, forget_bias=fb)
        ps = jax.vmap(lambda k, c=c: c.init(k, D, 32, V, jnp.float64))(jax.random.split(key, 2))
        th = theory(c, ps, xs, 0.0)
        assert ("predicted_log10_slope_per_step_back" in th) is applies, init
        if applies:
            assert th["gate_log10_mean"] == pytest.approx(-np.log10(1 + np.exp(-fb)), abs=2e-3)
            assert th["prediction"] == "log10 mean forget gate F"


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))


@pytest.mark.parametrize("overrides,message", [
    (["cell=lstm", "activation=sigmoid"],
     "activation=sigmoid does not apply to cell=lstm; allowed: tanh"),
    (["cell=lstm", "cell.forget_bias=inf"], "cell.forget_bias=inf is invalid: must be a finite"),
    (["cell=lstm", "cell.r_min=0.5"], "cell.r_min is not an option of cell=lstm (it takes "
                                      "cell.forget_bias, cell.peephole)"),
    (["cell.peephole=true"], "cell.peephole is not an option of cell=vanilla"),
    (["cell.forget_bias=1"], "cell.forget_bias is not an option of cell=vanilla"),
])
def test_bad_options_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_cfg(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_peephole_is_typed_by_the_schema():
    with pytest.raises(Exception, match="cell.peephole"):
        compose_cfg(["cell=lstm", "cell.peephole=maybe"])


def test_defaults_and_options_are_taken():
    assert CELLS["lstm"].inits is None
    cfg = compose_cfg(["cell=lstm"])
    assert (cfg.cell.forget_bias, cfg.cell.peephole) == (0.0, False)
    cfg = compose_cfg(["cell=lstm", "cell.forget_bias=-2.5", "cell.peephole=true",
                       "init=xavier"])
    assert (cfg.cell.forget_bias, cfg.cell.peephole) == (-2.5, True)


@pytest.mark.e2e
def test_job_files(tmp_path):
    """params.npz holds the LSTM's fields with a seed axis (w_co only with the peephole: see
    test_forget_bias_and_peephole_params); grad_norms.parquet has cell_grad_norm; summary.json
    has the forget gate's theory."""
    S, Hs, Vr = 2, 6, 5
    cfg = compose_cfg(["cell=lstm", f"seeds={S}", f"hidden_size={Hs}", "seq_len=4",
                       "batch_size=3", f"task.vocab_size={Vr}", "probe.loss_at=last",
                       "cell.forget_bias=1"])
    summary = run_job(cfg, tmp_path)
    assert summary["status"] == "ok"
    assert (summary["cell_label"], summary["model_label"]) == ("forget_bias=1", "lstm")
    npz = np.load(tmp_path / "params.npz")
    want = {f"W_x{g}": (S, Vr, Hs) for g in "ifoc"} | {f"W_h{g}": (S, Hs, Hs) for g in "ifoc"}
    want |= {f"b_{g}": (S, Hs) for g in "ifoc"} | {"W_hq": (S, Hs, Vr), "b_q": (S, Vr)}
    assert {k: npz[k].shape for k in npz.files} == want
    np.testing.assert_array_equal(npz["b_f"], np.ones((S, Hs)))
    df = pd.read_parquet(tmp_path / "grad_norms.parquet")
    assert len(df) == S * 4 and df.cell_grad_norm.gt(0).all() and df.grad_norm.gt(0).all()
    h = summary["headline"]
    assert h["cell_grad_norm_tT_median"] > 0
    assert h["theory"]["gate_log10_mean"] == pytest.approx(-np.log10(1 + np.exp(-1)), abs=1e-2)


def test_training_lowers_the_loss(key):
    """Training is generic: 30 Adam steps on one copy-task batch lower the LSTM's loss."""
    p = lstm(init="xavier", forget_bias=1.0).init(key, COPY_VOCAB, 16, COPY_VOCAB, jnp.float32)
    x, y = make_copy_batch(8, 2)(key)
    tx = make_optimizer("adam", 0.03, None)
    chunk = jax.jit(make_train_chunk(Training(
        lstm(forget_bias=1.0), "all", "tokens", tx,
        lambda k, i: (x, y, jnp.ones((8,), jnp.float32)), 30, 30)))
    _, m = chunk(init_state(p, tx), key, jnp.asarray(0))
    assert bool(m.active.all()) and float(m.loss[-1]) < 0.7 * float(m.loss[0])
