"""Resume and faults: a changed config or resume=false runs a job again, and gradients beyond
float32's range are flagged data. (Sweeps that are interrupted or have a failing job:
test_sweep.py.)"""


import pandas as pd
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
