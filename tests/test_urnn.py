"""The uRNN cell (Arjovsky, Shah & Bengio 2016): its unitary recurrence, FFT convention, fixed
permutation, modReLU and initialization; its per-timestep gradients against an independent
float64 numpy BPTT (tests/numpy_urnn.py); its validation, one job's files and one training run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpy_urnn as ref
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS
from rnnjax.core.cells import urnn as U
from rnnjax.core.probes import make_probe

register_configs()
CELL = CELLS["urnn"].build()
FIELDS = {  # name -> shape for D inputs, H units, Q outputs
    "theta1": "H", "theta2": "H", "theta3": "H", "v1_re": "H", "v1_im": "H", "v2_re": "H",
    "v2_im": "H", "V_re": "DH", "V_im": "DH", "b": "H", "h0_re": "H", "h0_im": "H",
    "W_hq": "2HQ", "b_q": "Q",
}


def shape_of(code, D, H, Q):
    return {"H": (H,), "DH": (D, H), "2HQ": (2 * H, Q), "Q": (Q,)}[code]


def as_numpy(p):
    return {k: np.asarray(v, np.float64) for k, v in p._asdict().items()}


def test_params_are_the_papers_in_order():
    assert U.URNNParams._fields == tuple(FIELDS)
    assert CELL.recurrent == ("theta1", "theta2", "theta3", "v1_re", "v1_im", "v2_re", "v2_im")


# ----------------------------------------------------------------------------- the recurrence


def random_params(seed, D=7, H=6, Q=7, S=None):
    """Networks drawn in numpy as the paper draws them, except for wider modReLU biases, which
    switch some units off and bend the others (the paper's +-0.01 leaves modReLU almost the
    identity), and a non-zero output bias. S networks stacked (leading axis) unless S is None.
    """
    rng = np.random.default_rng(seed)
    lead = () if S is None else (S,)

    def u(shape, bound):
        return rng.uniform(-bound, bound, lead + shape)

    return U.URNNParams(
        theta1=u((H,), np.pi), theta2=u((H,), np.pi), theta3=u((H,), np.pi),
        v1_re=u((H,), 1), v1_im=u((H,), 1), v2_re=u((H,), 1), v2_im=u((H,), 1),
        V_re=u((D, H), 0.7), V_im=u((D, H), 0.7), b=rng.uniform(-0.6, 0.3, lead + (H,)),
        h0_re=u((H,), 0.5), h0_im=u((H,), 0.5), W_hq=u((2 * H, Q), 0.5), b_q=u((Q,), 0.5))


def cast(p, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), p)


@jax.jit
def _recurrence_checks(p, v):
    """W v for the rows of v and max |W^* W - I|, in p's precision and in float32."""
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return (U.recurrence(p, v), U.unitarity_error(p),
            U.recurrence(p32, v.astype(jnp.complex64)), U.unitarity_error(p32))


@pytest.mark.parametrize("H", [1, 6, 16])
def test_W_is_unitary_and_the_cell_applies_it(H):
    p = random_params(H, H=H)
    W = ref.dense_W(as_numpy(p), U.permutation(H))
    np.testing.assert_allclose(W.conj().T @ W, np.eye(H), atol=1e-12)
    rng = np.random.default_rng(H)
    v = rng.normal(size=(5, H)) + 1j * rng.normal(size=(5, H))
    Wv = v @ W.T  # rows: W v
    np.testing.assert_allclose(np.linalg.norm(Wv, axis=1), np.linalg.norm(v, axis=1), rtol=1e-12)
    Wv64, err64, Wv32, err32 = _recurrence_checks(cast(p, jnp.float64), jnp.asarray(v))
    # the cell's FFT-based W is the dense product of the factors
    np.testing.assert_allclose(Wv64, Wv, rtol=1e-12, atol=1e-13)
    assert float(err64) < 1e-13
    # float32: complex64 throughout, norms kept to float32 precision
    assert Wv32.dtype == jnp.complex64
    np.testing.assert_allclose(np.linalg.norm(Wv32, axis=1), np.linalg.norm(v, axis=1),
                               rtol=2e-6)
    assert float(err32) < 2e-6


def test_fft_is_the_unitary_dft():
    n = 12
    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, n)) + 1j * rng.normal(size=(3, n))
    F = ref.dft_matrix(n)
    np.testing.assert_allclose(F.conj().T @ F, np.eye(n), atol=1e-13)
    Fu, Fiu = jax.jit(lambda u: (U.fft(u), U.ifft(u)))(jnp.asarray(u))
    np.testing.assert_allclose(Fu, u @ F.T, atol=1e-13)
    np.testing.assert_allclose(Fiu, u @ F.conj().T, atol=1e-13)
    np.testing.assert_allclose(Fu, np.fft.fft(u, norm="ortho"), atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(Fu, axis=1), np.linalg.norm(u, axis=1),
                               rtol=1e-13)


def test_the_permutation_is_fixed_and_the_authors(key):
    for H in (1, 7, 128):
        pi = U.permutation(H)
        assert sorted(pi) == list(range(H)) and pi.dtype.kind == "i"
        # the authors' code: np.random.seed(1234), then np.random.permutation(n_hidden)
        np.testing.assert_array_equal(pi, np.random.RandomState(1234).permutation(H))
    assert not np.array_equal(U.permutation(128), np.arange(128))
    # not a parameter: every leaf is a float array that optax trains
    for leaf in jax.tree.leaves(jax.eval_shape(lambda k: CELL.init(k, 3, 8, 2), key)):
        assert leaf.dtype == jnp.float32


def test_modrelu():
    z = jnp.array([3 + 4j, -0.3 + 0.4j, 0j, 1e-30 + 0j, -2j])
    b = jnp.array([-1.0, -1.0, 0.5, 0.5, 0.25])

    @jax.jit
    def value_and_grads(z):
        g = jax.grad(lambda re, im: jnp.sum(jnp.abs(U.modrelu(jax.lax.complex(re, im), b)) ** 2),
                     argnums=(0, 1))(z.real, z.imag)
        return U.modrelu(z, b), g

    h, g = value_and_grads(z)
    # |h| = relu(|z| + b), the phase of z kept; 0 at z = 0
    np.testing.assert_allclose(h, [(3 + 4j) * 4 / 5, 0, 0, 0.5, -2.25j], rtol=1e-12, atol=1e-300)
    assert all(np.isfinite(np.asarray(a)).all() for a in g)
    assert float(g[0][2]) == float(g[1][2]) == 0.0  # at z = 0: output 0, gradient 0, no NaN


def test_init_follows_the_paper(key):
    D, H, Q = 5, 32, 3
    shapes = jax.eval_shape(lambda k: CELL.init(k, D, H, Q, jnp.float32), key)
    for name, code in FIELDS.items():
        a = getattr(shapes, name)
        assert a.shape == shape_of(code, D, H, Q) and a.dtype == jnp.float32, name
    bounds = {"theta1": np.pi, "theta2": np.pi, "theta3": np.pi, "v1_re": 1, "v1_im": 1,
              "v2_re": 1, "v2_im": 1, "b": 0.01, "V_re": np.sqrt(6 / (D + H)),
              "V_im": np.sqrt(6 / (D + H)), "W_hq": np.sqrt(6 / (2 * H + Q)),
              "h0_re": np.sqrt(3 / (2 * H)), "h0_im": np.sqrt(3 / (2 * H))}
    draws = jax.jit(jax.vmap(lambda k: CELL.init(k, D, H, Q, jnp.float64)))(
        jax.random.split(key, 400))
    for name, bound in bounds.items():
        a = np.asarray(getattr(draws, name))
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound, name
        assert abs(a.mean()) < 0.02 * bound, name  # centred
    assert not np.asarray(draws.b_q).any()
    # E||h0||^2 = 1 (std of one draw ~ sqrt(0.4 / H) = 0.11; of the mean of 400 ~ 0.006)
    sq = np.sum(np.asarray(draws.h0_re) ** 2 + np.asarray(draws.h0_im) ** 2, axis=1)
    assert sq.mean() == pytest.approx(1.0, abs=0.03)
    # the state is complex of the parameters' precision
    for dtype, complex_dtype in ((jnp.float32, jnp.complex64), (jnp.float64, jnp.complex128)):
        def run(k, dtype=dtype):
            p = CELL.init(k, D, H, Q, dtype)
            s0 = CELL.initial_state(p, 2)
            return s0, CELL.step(p, s0, jnp.array([0, 1]))
        for s in jax.eval_shape(run, key):
            assert s.dtype == complex_dtype and s.shape == (2, H)


# ----------------------------------------------------------------------------- gradients


def reference_norms(p, x, y, kind, loss_at):
    """(loss, grad_norm (T,), param_grad_norm (T,)) of the numpy BPTT, one network."""
    pn = as_numpy(p)
    H = pn["theta1"].shape[0]
    loss, dh, shares = ref.bptt(pn, U.permutation(H), np.asarray(x), np.asarray(y), kind,
                                loss_at)
    g = np.sqrt(np.sum(np.abs(dh) ** 2, axis=(1, 2)))
    pg = np.array([np.sqrt(sum(np.sum(s[k] ** 2) for k in ref.RECURRENT)) for s in shares])
    return loss, g, pg


def tokens(seed, S=None, B=3, T=9, V=7):
    """Random tokens and targets, (B, T) each (S of them stacked unless S is None)."""
    rng = np.random.default_rng(seed)
    shape = (B, T) if S is None else (S, B, T)
    return rng.integers(0, V, shape, dtype=np.int32), rng.integers(0, V, shape, dtype=np.int32)


@pytest.mark.parametrize("loss_at,dtype,rtol", [("all", jnp.float64, 1e-8),
                                                ("last", jnp.float64, 1e-8),
                                                ("all", jnp.float32, 1e-4)])
@pytest.mark.e2e
def test_probe_matches_numpy_bptt(loss_at, dtype, rtol):
    """Three seeds of token inputs. float32 with the loss at the last step is checked against
    the reference in the job test below, with real inputs (the adding problem)."""
    S, kind = 3, "tokens"
    ps = random_params(len(loss_at), S=S)
    x, y = tokens(len(loss_at), S=S)
    res = jax.jit(jax.vmap(make_probe(CELL, loss_at, kind)))(cast(ps, dtype), x, y)
    assert res.log10_grad_norm.dtype == dtype
    n_off = 0
    for s in range(S):
        p = cast(jax.tree.map(lambda a, s=s: a[s], ps), dtype)  # the network as probed
        loss, g, pg = reference_norms(p, x[s], y[s], kind, loss_at)
        np.testing.assert_allclose(res.loss[s], loss, rtol=rtol)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_grad_norm[s], np.float64), g,
                                   rtol=rtol)
        np.testing.assert_allclose(10.0 ** np.asarray(res.log10_param_grad_norm[s], np.float64),
                                   pg, rtol=rtol)
        # comparisons that can fail: non-zero, varying profiles
        assert (g > 0).all() and (pg > 0).all()
        assert g[0] != pytest.approx(g[-1], rel=1e-3)
        zs, _ = ref.forward(as_numpy(p), U.permutation(6), x[s])
        n_off += int(np.sum(np.abs(zs) + np.asarray(p.b, np.float64) <= 0))
    assert n_off > 0  # the modReLU's off branch is exercised
    assert not res.overflow.any() and not res.forward_overflow_t.any()


def test_numpy_reference_against_finite_differences():
    """The reference's parameter gradients (its per-step shares, summed over t) against central
    finite differences of its own loss, for every recurrent parameter and both loss kinds."""
    for kind in ("tokens", "regression"):
        p = random_params(7, D=7 if kind == "tokens" else 2, Q=7 if kind == "tokens" else 1)
        pn, pi = as_numpy(p), U.permutation(6)
        if kind == "tokens":
            x, y = tokens(3)
        else:
            rng = np.random.default_rng(3)
            x, y = rng.uniform(size=(3, 9, 2)), rng.uniform(size=3)
        loss_at = "all" if kind == "tokens" else "last"
        _, _, shares = ref.bptt(pn, pi, x, y, kind, loss_at)
        total = {k: sum(s[k] for s in shares) for k in ref.RECURRENT}
        eps = 1e-6
        for name in ref.RECURRENT:
            for j in (0, 3):
                up, dn = dict(pn), dict(pn)
                up[name], dn[name] = pn[name].copy(), pn[name].copy()
                up[name][j] += eps
                dn[name][j] -= eps
                fd = (ref.loss_only(up, pi, x, y, kind, loss_at)
                      - ref.loss_only(dn, pi, x, y, kind, loss_at)) / (2 * eps)
                assert total[name][j] == pytest.approx(fd, rel=1e-6, abs=1e-10), (kind, name, j)
                assert fd != 0


def test_modrelu_stats_against_numpy():
    """The theory's modReLU numbers: the fraction of units off, and the mean over steps of
    0.5 log10 mean(on (1 + c^2) / 2), c = (|z| + b) / |z|, from the reference's z_t."""
    p = random_params(5)
    x, _ = tokens(5)
    off, log_f = jax.jit(U.modrelu_stats)(cast(p, jnp.float64), x)
    zs, _ = ref.forward(as_numpy(p), U.permutation(6), x)
    r = np.abs(zs)
    on = r + p.b > 0
    c = (r + p.b) / r
    want = np.mean([0.5 * np.log10(np.mean(np.where(on[t], (1 + c[t] ** 2) / 2, 0)))
                    for t in range(len(zs))])
    assert 0 < float(off) == pytest.approx(np.mean(~on), rel=1e-12)
    assert float(log_f) == pytest.approx(want, rel=1e-10) and want != 0


# ----------------------------------------------------------------------------- config and job


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("overrides,message", [
    (["cell=urnn", "activation=relu"],
     "activation=relu does not apply to cell=urnn; allowed: tanh"),
    (["cell=urnn", "init=orthogonal"], "init=orthogonal does not apply to cell=urnn; allowed: "
                                       "normal"),
    (["cell=urnn", "init.std=0.1"], "init.std=0.1 does not apply to cell=urnn"),
    (["cell=urnn", "cell.r_min=0.5"], "cell.r_min is not an option of cell=urnn"),
])
def test_what_the_urnn_does_not_take_fails_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_training_job_writes_the_papers_parameters_the_theory_and_lowers_the_loss(tmp_path):
    """task=adding (T = 20), two seeds trained 300 RMSProp steps (lr 1e-3, as the paper):
    params.npz holds the paper's parameters with their shapes; the profile at initialization
    (float32, real inputs, loss at the last step) equals the numpy reference's; the theory says
    0 and how far the measurement is from it; the loss falls from its initial value (~1-3: the
    state's norm grows like sqrt(t) under the inputs, and the read-out passes it on) to about
    the baseline's 1/6 (always predicting 1)."""
    S, H, T = 2, 16, 20
    cfg = validate(compose_cfg(["cell=urnn", "task=adding", f"seq_len={T}", f"hidden_size={H}",
                                "batch_size=20", f"seeds={S}", "train.steps=300",
                                "train.optimizer=rmsprop", "train.lr=1e-3",
                                "train.log_every=100"]))
    out = tmp_path / "job"
    summary = run_job(cfg, out)
    assert summary["status"] == "ok"
    assert json.loads((out / "summary.json").read_text())["status"] == "ok"
    params = np.load(out / "params.npz")
    assert set(params.files) == set(FIELDS)
    for name, code in FIELDS.items():
        assert params[name].shape == (S, *shape_of(code, 2, H, 1)), name
        assert params[name].dtype == np.float32
    df = pd.read_parquet(out / "grad_norms.parquet")
    assert {"grad_norm", "param_grad_norm"} <= set(df.columns)
    assert sorted(df.train_step.unique()) == [0, 100, 200, 300]
    init = df[df.train_step == 0]
    assert len(init) == S * T and (init.grad_norm > 0).all() and (init.param_grad_norm > 0).all()
    # the profile at initialization recomputed from the job's files by the numpy reference
    batch = np.load(out / "batch.npz")
    for s, seed in enumerate(sorted(init.seed.unique())):
        p = {k: params[k][s] for k in FIELDS}
        _, dh, shares = ref.bptt(p, U.permutation(H), batch["x"][s], batch["y"][s],
                                 "regression", "last")
        rows = init[init.seed == seed].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, np.sqrt(np.sum(np.abs(dh) ** 2, (1, 2))),
                                   rtol=1e-4)
        pg = [np.sqrt(sum(np.sum(sh[k] ** 2) for k in ref.RECURRENT)) for sh in shares]
        np.testing.assert_allclose(rows.param_grad_norm, pg, rtol=1e-4)
    h = summary["headline"]
    th = h["theory"]
    assert th["predicted_log10_slope_per_step_back"] == 0.0
    assert th["prediction"] == "unitary W (norm-preserving)"
    assert th["deviation_from_unitary_log10_per_step"] == h["log10_slope_per_step_back"]
    assert th["unitarity_error_max"] < 2e-6 and 0 <= th["modrelu_off_fraction"] < 0.1
    assert abs(h["log10_slope_per_step_back"]) < 0.01  # close to unitary at initialization
    m = pd.read_parquet(out / "metrics.parquet").sort_values("train_step")
    for _, seed in m.groupby("seed"):
        first, last = seed.train_loss.iloc[0], seed.val_loss.iloc[-1]
        assert last < 0.25 * first and last < 0.2, (first, last)
