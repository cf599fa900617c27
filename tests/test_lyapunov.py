"""The Lyapunov spectrum (rnnjax.core.theory.make_lyapunov and the job's lyapunov.* keys):
against an independent float64 numpy QR iteration, and the analytic cases: a linear RNN with
W = rho * orthogonal has every exponent log rho; a diagonal linear recurrence (the LRU) has
the exponents log |lambda_i|."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compose_cfg

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import load_lyapunov, load_metrics, load_summaries
from rnnjax.app.summary import lyapunov_k
from rnnjax.app.validate import ConfigError
from rnnjax.core.cells import registry, vanilla
from rnnjax.core.cells.lru import eigenvalues
from rnnjax.core.cells.lru import init_params as lru_params
from rnnjax.core.cells.vanilla import init_params
from rnnjax.core.init import gaussian, orthogonal, xavier
from rnnjax.core.tasks import make_random_batch
from rnnjax.core.theory import initial_frame, make_lyapunov
from rnnjax.report import plots

register_configs()

H, V, T = 6, 5, 40


def numpy_lyapunov(p, tokens, Q0, burn_in, every, act="tanh"):
    """The QR method in float64 numpy, written from its definition: h_t = phi(A_t),
    A_t = x_t W_xh + h_{t-1} W_hh + b_h, J_t = diag(phi'(A_t)) W_hh^T (column convention
    dh_t = J_t dh_{t-1}); from the frame Q0 (H, k), every `every` steps Q R = J ... J Q, the
    logs of |R_ii| summed over the blocks that start at t >= burn_in, divided by their steps.
    Averaged over sequences."""
    W_xh, W_hh, b_h = (np.asarray(p[n], np.float64) for n in ("W_xh", "W_hh", "b_h"))
    dphi = {"tanh": lambda h: 1 - h**2, "linear": lambda h: np.ones_like(h)}[act]
    phi = {"tanh": np.tanh, "linear": lambda a: a}[act]
    out = []
    for seq in np.asarray(tokens):
        h, Q = np.zeros(H), np.array(Q0, np.float64)
        total, steps, start = np.zeros(Q.shape[1]), 0, 0
        for t, tok in enumerate(seq):
            h = phi(W_xh[tok] + h @ W_hh + b_h)
            Q = (dphi(h)[:, None] * W_hh.T) @ Q
            if (t + 1) % every == 0 or t == len(seq) - 1:
                Q, R = np.linalg.qr(Q)
                if start >= burn_in:
                    total += np.log(np.abs(np.diag(R)))
                    steps += t + 1 - start
                start = t + 1
        out.append(total / max(steps, 1))
    return np.mean(out, 0)


def vanilla_net(key, init, act="tanh"):
    return jax.jit(lambda k: init_params(k, init, xavier(), V, H, V, jnp.float64))(key)


@pytest.fixture(scope="module")
def batch():
    return jax.jit(lambda k: make_random_batch(V, 3, T)(k))(jax.random.key(7))[0]


@pytest.mark.parametrize("k,every,burn_in", [
    (H, 1, 10), pytest.param(3, 1, 0, marks=pytest.mark.slow), (4, 4, 10),
    pytest.param(2, 7, 3, marks=pytest.mark.slow)])
def test_spectrum_matches_numpy_qr_iteration(batch, k, every, burn_in):
    p = vanilla_net(jax.random.key(1), gaussian(1.6))
    lam = jax.jit(make_lyapunov(vanilla("tanh"), k, burn_in, every))(p, batch)
    # the same first frame (the QR method's numbers depend on it at finite T), a fixed input
    Q0 = np.asarray(initial_frame(H, k, jnp.float64))
    want = numpy_lyapunov(p._asdict(), batch, Q0, burn_in, every)
    np.testing.assert_allclose(np.asarray(lam), want, rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(want) <= 1e-12)  # the QR method orders them


@pytest.mark.parametrize("every", [1, 3])
def test_linear_rho_orthogonal_has_every_exponent_log_rho(batch, every):
    rho = 0.8
    p = vanilla_net(jax.random.key(2), orthogonal(rho), "linear")
    lam = jax.jit(make_lyapunov(vanilla("linear"), H, 0, every))(p, batch)
    np.testing.assert_allclose(np.asarray(lam) / math.log(10), math.log10(rho), rtol=1e-10)


def test_diagonal_linear_recurrence_has_exponents_log_abs_lambda():
    """The LRU's Jacobian is diag(lambda) (its state's complex h: 2H real dimensions, each
    |lambda_i| twice; its skip term does not depend on the past: exponents -inf). Well separated
    |lambda_i| = 0.9 / 2^i: after the burn-in the frame holds the leading invariant subspaces
    to float64 precision, and each exponent is exactly log |lambda_i|, sorted."""
    cell = registry.build("lru", {})
    r = 0.9 / 2.0 ** np.arange(H)
    p = jax.jit(lambda k: lru_params(k, V, H, V, dtype=jnp.float64))(jax.random.key(3))
    p = p._replace(nu_log=jnp.asarray(np.log(-np.log(r))))
    x = jax.jit(lambda k: make_random_batch(V, 2, 140)(k))(jax.random.key(8))[0]
    lam = np.asarray(jax.jit(make_lyapunov(cell, 2 * H + 1, 70, 2))(p, x))
    want = np.repeat(np.log(np.abs(np.asarray(eigenvalues(p)))), 2)
    np.testing.assert_allclose(lam[:2 * H], want, rtol=1e-10)
    assert lam[2 * H] == -np.inf


def test_default_k_is_every_exponent_of_a_small_state():
    assert [lyapunov_k(None, n) for n in (6, 64, 65, 1024)] == [6, 64, 3, 3]
    assert [lyapunov_k(k, 10) for k in (1, 10, 50)] == [1, 10, 10]


def test_job_reports_the_spectrum_at_init_and_while_training(tmp_path):
    cfg = compose_cfg(["hidden_size=5", "seq_len=12", "batch_size=3", "seeds=2", "dtype=float64",
                       "train.steps=4", "train.log_every=2", "train.lr=0.1", "lyapunov.every=2"])
    summary = run_job(cfg, tmp_path)
    th = summary["headline"]["theory"]
    assert th["lyapunov_k"] == 5 and th["lyapunov_every"] == 2
    assert np.shape(th["lyapunov_log10_per_step_per_seed"]) == (2, 5)
    trained = summary["training"]["headline"]
    assert {"log10_slope_per_step_back", "theory"} <= trained.keys()
    lyap = load_lyapunov(tmp_path)
    assert sorted(lyap.train_step.unique()) == [0, 2, 4] and len(lyap) == 3 * 2 * 5
    at0 = lyap[lyap.train_step == 0].sort_values(["seed", "i"])
    np.testing.assert_allclose(at0.lyapunov_log10_per_step.to_numpy().reshape(2, 5),
                               th["lyapunov_log10_per_step_per_seed"], rtol=1e-12)
    end = lyap[lyap.train_step == 4].sort_values(["seed", "i"])
    np.testing.assert_allclose(end.lyapunov_log10_per_step.to_numpy().reshape(2, 5),
                               trained["theory"]["lyapunov_log10_per_step_per_seed"], rtol=1e-12)
    m = load_metrics(tmp_path)
    last = m[m.train_step == 4].sort_values("seed")
    np.testing.assert_allclose(last.log10_slope_per_step_back, trained["log10_slope_per_seed"])
    np.testing.assert_allclose(last.lyapunov_top_log10_per_step, end[end.i == 1]
                               .lyapunov_log10_per_step)
    # the vanilla RNN's mean field applies (loss at the last step): its prediction is beside it
    assert np.isfinite(last.predicted_log10_slope_per_step_back).all()
    # the report's figure: measured, predicted, top exponent, each from step 0 (the summary's)
    fig = plots.slope_during_training(m, load_summaries(tmp_path))
    lines = fig.axes[0].get_lines()[:3]
    assert [list(line.get_xdata()) for line in lines] == [[0, 2, 4]] * 3
    h0 = summary["headline"]["log10_slope_per_step_back"]
    assert lines[0].get_ydata()[0] == pytest.approx(h0)
    assert lines[2].get_ydata()[-1] == pytest.approx(
        trained["theory"]["lyapunov_top_log10_per_step"])


@pytest.mark.parametrize("key,value", [("lyapunov.k", 0), ("lyapunov.every", 0)])
def test_bad_lyapunov_options_are_one_line(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}={value} is invalid: must be an integer >= 1$"):
        compose_cfg([f"{key}={value}"])
