"""Sweeps through Hydra's launcher plugins: joblib (local processes) and submitit_local."""

import json

import pytest

from rnnjax import load_sweep


@pytest.mark.parametrize("launcher,plugin", [
    ("local_parallel", "hydra_plugins.hydra_joblib_launcher"),
    # The same plugin's SLURM launcher runs against a real cluster in tests/test_slurm.py.
    pytest.param("submitit_local", "hydra_plugins.hydra_submitit_launcher",
                 marks=pytest.mark.slow),
])
@pytest.mark.e2e
def test_sweep_through_launcher(tmp_path, jax_cache, app, launcher, plugin):
    pytest.importorskip(plugin)
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}",
            "activation=tanh,relu", "seq_len=5", "hidden_size=4", "batch_size=2", "seeds=2"]
    # The sweep itself in-process; its jobs run in the launcher's own processes.
    r = app(*args)
    assert r.code == 0, r.err
    assert r.closing() == f"rnnjax: sweep {sweep}: 2 jobs: 2 ok"
    df = load_sweep(sweep)
    assert df.job.nunique() == 2 and len(df) == 2 * 2 * 5
    assert set(df.activation) == {"tanh", "relu"}
    # Job directories are named by their overrides, whichever process ran them.
    for act in ("tanh", "relu"):
        job = sweep / f"activation={act},batch_size=2,hidden_size=4,seeds=2,seq_len=5"
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"

    # The same command again (in-process): every job is skipped without being launched, so
    # no process starts and no file changes (submitit would add a job to .submitit/).
    files = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()
             and p.name != "multirun.yaml"}
    r = app(*args)
    assert r.code == 0, r.err
    assert r.closing() == f"rnnjax: sweep {sweep}: 2 jobs: 2 ok (2 skipped: finished earlier)"
    assert "Launching" not in r.out and "launching" not in r.out
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()
            and p.name != "multirun.yaml"} == files
