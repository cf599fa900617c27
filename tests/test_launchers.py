"""Sweeps through Hydra's launcher plugins: joblib (local processes) and submitit_local."""

import json

import pytest
from test_cli import run

from rnnjax import load_sweep


@pytest.mark.parametrize("launcher,plugin", [
    ("local_parallel", "hydra_plugins.hydra_joblib_launcher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher"),
])
def test_sweep_through_launcher(tmp_path, jax_cache, launcher, plugin):
    pytest.importorskip(plugin)
    sweep = tmp_path / "sweep"
    run(["-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", "activation=tanh,relu",
         "seq_len=5", "hidden_size=4", "batch_size=2", "seeds=2"], tmp_path, jax_cache)
    df = load_sweep(sweep)
    assert df.job.nunique() == 2 and len(df) == 2 * 2 * 5
    assert set(df.activation) == {"tanh", "relu"}
    # Job directories are named by their overrides, whichever process ran them.
    for act in ("tanh", "relu"):
        job = sweep / f"activation={act},batch_size=2,hidden_size=4,seeds=2,seq_len=5"
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
