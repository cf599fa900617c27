"""Headline numbers and the job's log line, from a probe's arrays on the host."""

import logging

import numpy as np
import pytest

from rnnjax.app.summary import Profile, headline, log_headline, to_host
from rnnjax.core.probes import ProbeResult


def test_to_host_exponentiates_in_float64():
    res = ProbeResult(loss=np.float32(1.5),
                      log10_grad_norm=np.array([-np.inf, 40.0, np.inf, np.nan], np.float32),
                      log10_param_grad_norm=np.zeros(4, np.float32),
                      overflow=np.array([True, False, False, False]),
                      forward_overflow_t=np.int32(0), taps={"cell": np.ones(4, np.float32)})
    p = to_host(res)
    assert p.grad_norm[0] == 0 and p.grad_norm[1] == pytest.approx(1e40, rel=1e-6)
    assert np.isposinf(p.grad_norm[2]) and np.isnan(p.grad_norm[3])  # beyond float32: a number
    assert p.grad_norm.dtype == np.float64 and p.taps["cell"].tolist() == [10.0] * 4


def profile(g, overflow=None, forward_t=(0, 0)):
    g = np.asarray(g, np.float64)
    return Profile(np.ones(len(g)), g, g, np.zeros(g.shape, bool) if overflow is None
                   else np.asarray(overflow), np.asarray(forward_t), {})


def test_headline_counts_each_flag_from_its_own_source():
    T = 20
    g = np.vstack([0.5 ** (T - np.arange(1, T + 1.0)), 0.5 ** (T - np.arange(1, T + 1.0))])
    g[0, :3] = 0.0  # underflowed
    g[1, :2] = np.inf  # a lost backward chain
    over = np.isinf(g)
    h = headline(profile(g, over, forward_t=(0, 7)))
    assert h["log10_slope_per_step_back"] == pytest.approx(np.log10(0.5), abs=1e-12)
    assert h["n_underflow"] == 3 and h["n_overflow"] == 2
    assert h["n_forward_overflow"] == 1 and h["forward_overflow_t_per_seed"] == [0, 7]
    assert h["n_nonfinite"] == 2 * 2  # grad_norm and param_grad_norm of the lost steps


@pytest.mark.parametrize("loss_at", ["all", "last"])
def test_log_line_shows_predictions_only_where_they_apply(caplog, loss_at):
    h = {"log10_slope_per_step_back": -1.2, "loss_mean": 3.3, "n_underflow": 0,
         "n_overflow": 0, "n_forward_overflow": 0, "forward_overflow_t_per_seed": [0, 0],
         "theory": {"mean_field": {"log10_factor_per_step": -1.1},
                    "pascanu_log10_bound_per_step": -0.8, "lyapunov_top_log10_per_step": -1.0}}
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        log_headline("tanh/normal", "T=8 H=4 S=2", loss_at, h, "ok", 0.1)
    line = caplog.records[-1].getMessage()
    assert line.startswith("tanh/normal T=8 H=4 S=2: log10 grad_norm per step back -1.2000 ")
    assert ("mean field -1.1" in line) == (loss_at == "last")
    assert ("no prediction applies" in line) == (loss_at == "all")


def test_log_line_reads_small_slopes_and_forward_overflow(caplog):
    h = {"log10_slope_per_step_back": -2.1e-5, "loss_mean": 0.2, "n_underflow": 0,
         "n_overflow": 0, "n_forward_overflow": 1, "forward_overflow_t_per_seed": [0, 12],
         "theory": {"lyapunov_top_log10_per_step": -2.3e-5, "prediction": "unitary W",
                    "predicted_log10_slope_per_step_back": 0.0}}
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        log_headline("urnn", "T=8 H=4 S=2", "last", h, "nonfinite", 0.1)
    line = caplog.records[-1].getMessage()
    assert "per step back -2.10e-05" in line and "unitary W +0.0000" in line
    assert "FORWARD OVERFLOW in 1 of 2 seeds (H_t not finite from t=12" in line


@pytest.mark.e2e
def test_lyapunov_counts_every_leaf_of_a_pytree_state(key):
    """The number of exponents is capped by the state's whole real dimension: with H = 1 the
    pair cell's state is h (1, 2) and m (1,), 3 numbers, though its first leaf holds 2."""
    import jax
    from helpers import pair_cell as _pair_cell

    from rnnjax.app.summary import theory_summary
    from rnnjax.core.tasks import make_random_batch

    cell = _pair_cell()
    keys = jax.random.split(key, 2)
    params = jax.vmap(lambda k: cell.init(k, 4, 1, 4))(keys)
    x = jax.vmap(lambda k: make_random_batch(4, 2, 8)(k)[0])(keys)
    th = theory_summary(cell, params, x, -0.1)
    assert np.asarray(th["lyapunov_exponents_per_seed"]).shape == (2, 3)
