"""d2l's GRU (d2l 10.2): the probe against an independent numpy BPTT, the reset gate before the
recurrent product, its initializations, theory, validation and one in-process job."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import references
from conftest import ROOT
from hydra import compose, initialize_config_dir
from numpy_gru import gru_bptt, sigmoid

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import log10_slope
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS
from rnnjax.core.cells.gru import GRUParams, gru, theory
from rnnjax.core.probes import make_probe
from rnnjax.core.tasks import COPY_VOCAB, make_copy_batch
from rnnjax.core.train import Training, init_state, make_optimizer, make_train_chunk

register_configs()
D = V = 7  # vocabulary
H = 5


def random_net(key, dtype=jnp.float64):
    """A GRU with W_h* ~ N(0, 1.2^2 / H), Glorot inputs and random biases, so that gradients
    neither vanish nor explode over a few steps and every gate matters."""
    p = gru(init="gaussian", init_value=1.2).init(key, D, H, V, jnp.float64)
    keys = jax.random.split(jax.random.fold_in(key, 1), 4)
    p = p._replace(**{b: 0.5 * jax.random.normal(k, a.shape, jnp.float64)
                      for (b, a), k in zip([("b_z", p.b_z), ("b_r", p.b_r), ("b_h", p.b_h),
                                            ("b_q", p.b_q)], keys, strict=True)})
    return jax.tree.map(lambda a: a.astype(dtype), p)


def tokens(key, B, T):
    return references.tokens(key, B, T, V)


@functools.cache
def probe(loss_at):
    return jax.jit(make_probe(gru(), loss_at))


def norms(a):
    return 10.0 ** np.asarray(a, np.float64)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-8), (jnp.float32, 1e-4)])
@pytest.mark.parametrize("loss_at", ["all", "last"])
@pytest.mark.e2e
def test_probe_matches_numpy_bptt(key, loss_at, dtype, rtol):
    """grad_norm and param_grad_norm (W_hz, W_hr, W_hh together) at every t, on 3 seeds."""
    for seed in range(3):
        k_net, k_tok = jax.random.split(jax.random.fold_in(key, seed))
        p = random_net(k_net, dtype)
        x, y = tokens(k_tok, 3, 9)
        res = probe(loss_at)(p, x, y)
        assert res.log10_grad_norm.dtype == dtype
        ref = {k: np.asarray(v, np.float64) for k, v in p._asdict().items()}
        loss, gn, pgn, _ = gru_bptt(ref, np.asarray(x), np.asarray(y), loss_at)
        np.testing.assert_allclose(res.loss, loss, rtol=rtol)
        np.testing.assert_allclose(norms(res.log10_grad_norm), gn, rtol=rtol)
        np.testing.assert_allclose(norms(res.log10_param_grad_norm), pgn, rtol=rtol)
        assert not res.overflow.any() and int(res.forward_overflow_t) == 0
        assert gn.min() > 0 and pgn[1:].min() > 0  # a comparison that can fail (H_0 = 0)
        if loss_at == "last":
            assert gn[0] < 0.5 * gn[-1]


def test_numpy_reference_agrees_with_autodiff(key):
    """The reference's full gradients of W_hz, W_hr, W_hh equal jax.grad of the loss (so the
    reference itself is checked, not only its agreement with the probe)."""
    from rnnjax.core.cells import unroll
    from rnnjax.core.losses import make_loss

    p = random_net(key)
    x, y = tokens(jax.random.fold_in(key, 2), 4, 6)
    loss = make_loss("tokens", "all")
    grads = jax.jit(jax.grad(lambda q: loss(unroll(gru(), q, x)[1], y)))(p)
    _, _, _, dW = gru_bptt({k: np.asarray(v) for k, v in p._asdict().items()}, np.asarray(x),
                           np.asarray(y), "all")
    for k, v in dW.items():
        np.testing.assert_allclose(getattr(grads, k), v, rtol=1e-10, atol=1e-15)


def test_reset_gate_acts_before_the_recurrent_product():
    """One step by hand, H = 2: d2l's candidate tanh(x W_xh + (R * H) W_hh + b_h), not
    torch.nn.GRU's tanh(x W_in + b_in + R * (H W_hn + b_hn)) with the same numbers."""
    h = np.array([[0.8, -0.6]])
    W_hr = np.array([[2.0, -1.0], [0.5, 1.5]])
    W_hh = np.array([[0.3, -1.2], [0.9, 0.4]])
    z0 = np.zeros((2, 2))
    p = GRUParams(W_xz=z0 + 0.1, W_hz=z0, b_z=np.zeros(2),
                  W_xr=z0, W_hr=W_hr, b_r=np.array([0.2, -0.3]),
                  W_xh=z0 + 0.05, W_hh=W_hh, b_h=np.array([0.1, 0.0]),
                  W_hq=np.eye(2), b_q=np.zeros(2))
    x = np.array([1])
    z = sigmoid(0.1 + h @ p.W_hz)
    r = sigmoid(h @ W_hr + p.b_r)
    d2l = np.tanh(0.05 + (r * h) @ W_hh + p.b_h)
    torch_style = np.tanh(0.05 + p.b_h + r * (h @ W_hh))
    got = np.asarray(gru().step(jax.tree.map(jnp.asarray, p), jnp.asarray(h), jnp.asarray(x)))
    np.testing.assert_allclose(got, z * h + (1 - z) * d2l, rtol=1e-12)
    assert np.abs(got - (z * h + (1 - z) * torch_style)).max() > 0.05


def test_open_update_gate_decays_by_exactly_z_per_step(key):
    """W_h* = 0 and W_xz = 0 with b_z = logit(z): dL/dH_{t-1} = dL/dH_t * z exactly for the loss
    at the last step, so grad_norm falls by log10 z per step, which the theory reports."""
    z, T = 0.7, 12
    p = random_net(key)
    p = p._replace(W_hz=0 * p.W_hz, W_hr=0 * p.W_hr, W_hh=0 * p.W_hh, W_xz=0 * p.W_xz,
                   b_z=jnp.full((H,), np.log(z / (1 - z))))
    x, y = tokens(jax.random.fold_in(key, 3), 4, T)
    g = norms(probe("last")(p, x, y).log10_grad_norm)
    np.testing.assert_allclose(g, g[-1] * z ** (T - np.arange(1, T + 1)), rtol=1e-10)
    th = theory(gru(), jax.tree.map(lambda a: a[None], p), x[None], log10_slope(g)[0])
    assert th["gate_log10_mean"] == pytest.approx(np.log10(z), abs=1e-12)
    # W_h* = 0: the prediction applies, and it is exact here
    assert th["predicted_log10_slope_per_step_back"] == pytest.approx(log10_slope(g)[0],
                                                                      abs=1e-10)


def test_d2l_init_and_the_inits_of_the_recurrent_matrices(key):
    """normal: every weight N(0, std^2) (d2l), biases 0; another init draws every W_h* (each
    its own) and leaves the inputs and W_hq Glorot."""
    p = gru(init="normal", init_value=0.05).init(key, 40, 64, 30, jnp.float64)
    for k, a in p._asdict().items():
        if k.startswith("b_"):
            assert not np.any(a), k
        else:
            assert np.std(a) == pytest.approx(0.05, rel=0.1), k
    p = gru(init="orthogonal", init_value=0.9).init(key, 40, 64, 30, jnp.float64)
    for k in ("W_hz", "W_hr", "W_hh"):
        w = np.asarray(getattr(p, k))
        np.testing.assert_allclose(w @ w.T, 0.81 * np.eye(64), atol=1e-10)
    assert not np.allclose(p.W_hz, p.W_hr)
    assert np.var(p.W_xz) == pytest.approx(2 / (40 + 64), rel=0.15)  # Glorot


def test_theory_at_d2l_init_predicts_the_slope_and_not_with_glorot(key):
    x, _ = tokens(key, 8, 20)
    for init, applies in (("normal", True), ("xavier", False)):
        c = gru(init=init)
        ps = jax.vmap(lambda k, c=c: c.init(k, D, 32, V, jnp.float64))(jax.random.split(key, 2))
        th = theory(c, ps, jnp.stack([x, x]), 0.0)
        assert ("predicted_log10_slope_per_step_back" in th) is applies, init
        if applies:  # d2l's tiny weights: Z ~ sigmoid(0) = 1/2
            assert th["gate_log10_mean"] == pytest.approx(np.log10(0.5), abs=1e-3)
            assert th["prediction"] == "log10 mean update gate Z"


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))


@pytest.mark.parametrize("overrides,message", [
    (["cell=gru", "activation=relu"], "activation=relu does not apply to cell=gru; allowed: tanh"),
    (["cell=gru", "cell.forget_bias=1"],
     "cell.forget_bias is not an option of cell=gru (it takes no options)"),
    (["cell=gru", "cell.peephole=true"], "cell.peephole is not an option of cell=gru"),
])
def test_bad_options_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_cfg(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_init_is_taken():
    assert CELLS["gru"].inits is None
    for init in ("normal", "orthogonal", "identity", "gaussian", "xavier", "spectral"):
        assert compose_cfg(["cell=gru", f"init={init}"]).cell.name.value == "gru"
    compose_cfg(["cell=gru", "init.std=0.05"])


@pytest.mark.e2e
def test_job_files(tmp_path):
    """params.npz holds the GRU's fields with a seed axis; grad_norms.parquet has no
    cell_grad_norm; summary.json has the gate theory."""
    S, Hs, Vr = 2, 6, 5
    cfg = compose_cfg(["cell=gru", f"seeds={S}", f"hidden_size={Hs}", "seq_len=4",
                       "batch_size=3", f"task.vocab_size={Vr}", "probe.loss_at=last"])
    summary = run_job(cfg, tmp_path)
    assert summary["status"] == "ok"
    npz = np.load(tmp_path / "params.npz")
    want = {"W_xz": (S, Vr, Hs), "W_hz": (S, Hs, Hs), "b_z": (S, Hs), "W_xr": (S, Vr, Hs),
            "W_hr": (S, Hs, Hs), "b_r": (S, Hs), "W_xh": (S, Vr, Hs), "W_hh": (S, Hs, Hs),
            "b_h": (S, Hs), "W_hq": (S, Hs, Vr), "b_q": (S, Vr)}
    assert {k: npz[k].shape for k in npz.files} == want
    df = pd.read_parquet(tmp_path / "grad_norms.parquet")
    assert "cell_grad_norm" not in df.columns and df.grad_norm.gt(0).all() and len(df) == S * 4
    th = summary["headline"]["theory"]
    assert th["gate"] == "update gate Z" and th["prediction"] == "log10 mean update gate Z"


@pytest.mark.e2e
def test_training_lowers_the_loss(key):
    """Training is generic: 30 Adam steps on one copy-task batch lower the GRU's loss."""
    p = gru(init="xavier").init(key, COPY_VOCAB, 16, COPY_VOCAB, jnp.float32)
    x, y = make_copy_batch(8, 2)(key)
    tx = make_optimizer("adam", 0.03, None)
    chunk = jax.jit(make_train_chunk(Training(
        gru(), "all", "tokens", tx, lambda k, i: (x, y, jnp.ones((8,), jnp.float32)), 30, 30)))
    _, m = chunk(init_state(p, tx), key, jnp.asarray(0))
    assert bool(m.active.all()) and float(m.loss[-1]) < 0.7 * float(m.loss[0])
