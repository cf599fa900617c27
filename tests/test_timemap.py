"""The time-to-time map (rnnjax.core.timemap, probe.time_map): every entry against independent
float64 numpy BPTT (tests/numpy_*.py) of each loss term alone, for the vanilla RNN (truncated),
the GRU and the LRU (complex state); the sum over loss steps against the probe; the refusals;
a job's time_map.parquet and the report's image of it."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import TINY, compose_cfg
from numpy_bptt import bptt
from numpy_gru import gru_bptt
from numpy_lru import lru_bptt

from rnnjax.app import timemap
from rnnjax.app.config import Config, LossAt, register_configs
from rnnjax.app.job import run_job
from rnnjax.app.memory import MemoryPlan
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import registry, vanilla
from rnnjax.core.probes import make_probe
from rnnjax.core.timemap import MAX_T, make_time_map
from rnnjax.report import build

B, T, D, H = 3, 6, 5, 4
CUT = 4  # truncated BPTT every CUT steps
register_configs()


def numpy_params(cell, rng):
    """A network of `cell` with entries drawn N(0, 0.5^2) in numpy (no initializer to
    compile)."""
    shapes = jax.eval_shape(lambda k: cell.init(k, D, H, D, jnp.float64), jax.random.key(0))
    return jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape), shapes)


# The loss term of step s alone is the loss at the last step of the sequence cut after s:
# each reference's loss_at="last" on x[:, :s + 1] gives d L_s / dH_t for t <= s, as the
# gradient (s + 1, B, H) where it returns one, else its norms (s + 1,).
REFERENCES = {
    "vanilla": lambda p, x, y: bptt(p, x, y, "tanh", "last")[1],
    "gru": lambda p, x, y: gru_bptt(p, x, y, "last")[1],
    "lru": lambda p, x, y: lru_bptt(p, x, y, "last")["G"],
}


def reference(case, p, x, y, cut=None):
    """(T, T) log10 ||d(L_s / T)/dH_t|| ([s - 1, t - 1], -inf for t > s and, with truncated
    BPTT every `cut` steps, across a cut), and where the reference gives gradients the
    gradients (T, T, B, H), else None."""
    B, T = x.shape
    want, G = np.full((T, T), -np.inf), None
    for s in range(T):
        g = np.asarray(REFERENCES[case](p, x[:, :s + 1], y[:, :s + 1])) / T
        if cut:  # nothing reaches back across a cut
            g[:s // cut * cut] = 0
        if g.ndim > 1:
            G = np.zeros((T, T, *g.shape[1:]), g.dtype) if G is None else G
            G[s, :s + 1] = g
            g = np.sqrt((np.abs(g) ** 2).sum((1, 2)))
        with np.errstate(divide="ignore"):
            want[s, :s + 1] = np.log10(g)
    return want, G


def check(M, want):
    """The map M equals the reference to 1e-10 relative (in the norm), -inf where it is."""
    reached = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(M), reached)
    assert np.isneginf(M[~reached]).all() and np.ptp(M[reached]) > 0.2  # not a flat map
    np.testing.assert_allclose(10 ** (M[reached] - want[reached]), 1, rtol=0, atol=1e-10)


CELLS = {"vanilla": vanilla("tanh"), "gru": registry.build("gru", {}),
         "lru": registry.build("lru", {})}


@pytest.mark.parametrize("case", list(CELLS))
def test_every_entry_matches_numpy_bptt_of_each_loss_term(case):
    cell = CELLS[case]
    rng = np.random.default_rng(0)
    p = numpy_params(cell, rng)
    x, y = rng.integers(0, D, (2, B, T))
    # the vanilla RNN's truncated every CUT steps, beside its probe in the same program
    cut = CUT if case == "vanilla" else None
    tm, probe = jax.jit(lambda p, x, y: (
        make_time_map(cell, truncate=cut)(p, x, y),
        cut and make_probe(cell, "all", truncate=cut, scan="sequential")(p, x, y)))(p, x, y)
    want, G = reference(case, p._asdict(), x, y, cut)
    check(np.asarray(tm.log10_grad_norm), want)
    if cut:  # sum_s d(L_s / T)/dH_t is the all-steps gradient the probe measures
        summed = np.log10(np.sqrt((G.sum(0) ** 2).sum((1, 2))))
        np.testing.assert_allclose(10 ** (np.asarray(probe.log10_grad_norm) - summed), 1,
                                   rtol=0, atol=1e-10)
        assert float(tm.loss) == pytest.approx(float(probe.loss), rel=1e-14)
    else:
        assert np.isfinite(want[np.tril_indices(T)]).all()


@pytest.mark.parametrize("change, says", [
    ({"seq_len": MAX_T + 1}, f"it takes T <= {MAX_T} timesteps, this job has T={MAX_T + 1}"),
    ({"loss_at": "last"}, "probe.time_map=true needs probe.loss_at=all"),
    ({"layers": 2}, "maps one layer, not a stack (model.layers=2)"),
])
def test_refusals_are_one_line_naming_the_key(change, says):
    cfg = Config(seq_len=change.get("seq_len", 8), hidden_size=4, batch_size=2)
    cfg.probe.time_map = True
    cfg.probe.loss_at = LossAt(change.get("loss_at", "all"))
    cfg.model.layers = change.get("layers", 1)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith("probe.time_map=true") and says in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A TINY job (float32, T = 3) with the loss over all steps and probe.time_map=true: its
    directory."""
    out = tmp_path_factory.mktemp("timemap") / "job"
    cfg = compose_cfg([*TINY, "probe.loss_at=all", "probe.time_map=true"])
    summary = run_job(cfg, out)
    assert summary["status"] == "ok" and "time_map.parquet" in summary["files"]
    return out


def test_the_job_writes_the_map_numpy_bptt_gives(job):
    df = pd.read_parquet(job / "time_map.parquet")
    assert list(df.columns) == ["seed", "s", "t", "log10_grad_norm"]
    assert len(df) == 2 * 6 and (df.s >= df.t).all()  # 2 seeds, T(T+1)/2 rows each
    params, batch = np.load(job / "params.npz"), np.load(job / "batch.npz")
    probe = pd.read_parquet(job / "grad_norms.parquet")
    for i, seed in enumerate((0, 1)):
        one = df[df.seed == seed]
        M = np.full((3, 3), -np.inf)
        M[one.s - 1, one.t - 1] = one.log10_grad_norm
        want, G = reference("vanilla", {k: v[i] for k, v in params.items()}, batch["x"][i],
                            batch["y"][i])
        np.testing.assert_allclose(M, want, rtol=0, atol=1e-6)  # float32: decades to 1e-6
        # the sum over loss steps: the probe's all-steps norm, in float32
        summed = np.sqrt((G.sum(0) ** 2).sum((1, 2)))
        norms = probe[probe.seed == seed].sort_values("t").grad_norm.to_numpy()
        np.testing.assert_allclose(norms, summed, rtol=1e-5)


def test_the_report_draws_the_map(job, monkeypatch):
    monkeypatch.setattr(build, "figures", lambda *a: [])  # the other figures: test_plots.py
    assert build.main([str(job)]) == 0
    assert (job / "time_map.png").stat().st_size > 0
    assert "![Time-to-time map" in (job / "report.md").read_text()


def test_a_map_whose_one_network_does_not_fit_is_refused_in_one_line(job, monkeypatch):
    plan = MemoryPlan(networks=2, chunk=1, per_network=3 * 10**9, fixed=0, budget=10**9)
    monkeypatch.setattr(timemap, "fit_seeds", lambda *a: SimpleNamespace(plan=plan))
    cfg = Config(max_memory_gb=1.0)
    run = SimpleNamespace(cfg=cfg, cell=CELLS["vanilla"], task=SimpleNamespace(kind="tokens"),
                          params=None,
                          x=np.zeros((2, 2, 3), int), y=None, budget=10**9, out=job)
    with pytest.raises(ValueError) as e:
        timemap.write_time_map(run, None)
    assert str(e.value) == (
        "probe.time_map=true is refused: the map of one network at T=3 needs about 3 GB "
        "(planned peak), over the 1 GB budget (max_memory_gb=1); use a smaller seq_len or "
        "batch_size, or probe.time_map=false")
