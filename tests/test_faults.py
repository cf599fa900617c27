"""Resume and faults: a changed config or resume=false runs a job again, and gradients beyond
float32's range are flagged data. (Sweeps that are interrupted or have a failing job:
test_sweep.py.)"""

import json

import numpy as np
import pandas as pd
import pytest
from test_cli import run

SMALL = ["hidden_size=4", "batch_size=2", "seeds=2"]


def test_changed_config_or_resume_false_runs_again(tmp_path, jax_cache):
    job = tmp_path / "job"
    run([f"hydra.run.dir={job}", "seq_len=3"] + SMALL, tmp_path, jax_cache)
    p = run([f"hydra.run.dir={job}", "seq_len=4"] + SMALL, tmp_path, jax_cache)
    assert "another config" in p.stdout + p.stderr
    assert pd.read_parquet(job / "grad_norms.parquet").t.max() == 4
    first = (job / "summary.json").read_bytes()
    p = run([f"hydra.run.dir={job}", "seq_len=4", "resume=false"] + SMALL, tmp_path, jax_cache)
    assert "already holds" not in p.stdout + p.stderr
    assert (job / "summary.json").read_bytes() != first  # run again (a new wall time)


@pytest.mark.parametrize("flag", ["overflow", "underflow"])
def test_float32_range_is_flagged_and_float64_is_finite(tmp_path, jax_cache, flag):
    if flag == "overflow":
        # tanh in the chaotic phase (g = 4): the gradient grows ~0.07 decades per step back,
        # ~70 decades over 1000 steps: beyond float32 (1e38), within float64 (1e308); the
        # forward pass stays bounded.
        case = ["activation=tanh", "init=gaussian", "init.gain=4", "seq_len=1000",
                "hidden_size=16"]
    else:
        # linear, W_hh = 0.5 * orthogonal: exactly 0.5 per step back, 1e-60 after 200 steps.
        case = ["activation=linear", "init=orthogonal", "init.gain=0.5", "seq_len=200",
                "hidden_size=8"]
    common = case + ["probe.loss_at=last", "batch_size=2", "seeds=2"]
    s, df = {}, {}
    for dtype in ("float32", "float64"):
        job = tmp_path / dtype
        p = run([f"hydra.run.dir={job}", f"dtype={dtype}"] + common, tmp_path, jax_cache)
        assert "Traceback" not in p.stderr
        s[dtype] = json.loads((job / "summary.json").read_text())
        df[dtype] = pd.read_parquet(job / "grad_norms.parquet")
    h32, h64 = s["float32"]["headline"], s["float64"]["headline"]
    d32, d64 = df["float32"], df["float64"]
    # float64: finite and positive everywhere, nothing flagged.
    assert np.isfinite(d64.grad_norm).all() and (d64.grad_norm > 0).all()
    assert s["float64"]["status"] == "ok" and h64["n_nonfinite"] == h64["n_underflow"] == 0
    assert not d64.underflow.any() and not d64.overflow.any()
    # float32: the same profile until it leaves the range; every row is kept and flagged.
    assert len(d32) == len(d64)
    assert (d32.underflow == (d32.grad_norm == 0)).all()
    assert (d32.overflow == np.isposinf(d32.grad_norm)).all()
    assert not d32.grad_norm.isna().any()  # inf for an overflow, never NaN
    if flag == "overflow":
        assert s["float32"]["status"] == "nonfinite" and h32["n_overflow"] > 0
        assert d32.overflow.any() and not d32.underflow.any()
        assert h64["log10_slope_per_step_back"] > 0.03  # float64 holds ~70 decades
        assert d64.grad_norm.max() > 1e45
        # The overflowed rows are the earliest steps of each seed: t = 1 up to a last one.
        for _, seed in d32.groupby("seed"):
            n = int(seed.overflow.sum())
            assert n > 0 and seed.sort_values("t").overflow.iloc[:n].all()
        # float32 and float64 draw their own networks; both slopes are of the chaotic phase.
        assert h32["log10_slope_per_step_back"] > 0.03
    else:
        assert s["float32"]["status"] == "ok" and h32["n_underflow"] > 0
        assert d32.underflow.any() and not d32.overflow.any()
        assert h64["log10_slope_per_step_back"] == pytest.approx(np.log10(0.5), abs=1e-9)
        assert d64.grad_norm.min() < 1e-50
        # The float32 slope is fitted above the underflowed steps and is exact there too.
        assert h32["log10_slope_per_step_back"] == pytest.approx(np.log10(0.5), abs=1e-4)
