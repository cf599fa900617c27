"""Resumable sweeps and faults: a killed sweep re-run completes with its finished jobs
skipped, a failing job is recorded and the sweep goes on, and gradients beyond float32's
range are flagged data."""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from test_cli import RUN, run

from rnnjax import load_sweep
from rnnjax.config import sweep_dir_override, sweep_name
from rnnjax.results import job_status

SMALL = ["hidden_size=4", "batch_size=2", "seeds=2"]


def summaries(sweep):
    return {p.parent.name: p for p in sweep.rglob("summary.json")}


def test_sweep_name_is_order_free_and_ignores_hydra_and_resume():
    a = sweep_name(["activation=tanh,relu", "seq_len=16", "hydra/launcher=local_parallel"])
    b = sweep_name(["resume=false", "seq_len=16", "activation=tanh,relu", "hydra.verbose=true"])
    assert a == b == "activation=tanh,relu__seq_len=16"
    assert sweep_name([]) == "default"
    assert sweep_name(["task.path=/data/my text.txt"]) == "task.path=_data_my_text.txt"
    long = sweep_name([f"init.gain={'1,' * 100}1"])
    assert len(long) == 120 and long != sweep_name([f"init.gain={'1,' * 101}1"])
    assert sweep_dir_override(["seq_len=1,2"]) == []  # not a multirun
    assert sweep_dir_override(["-m", "hydra.sweep.dir=x", "seq_len=1,2"]) == []
    assert sweep_dir_override(["-m", "seq_len=1,2"]) == [
        "hydra.sweep.dir='results/runs/multirun/seq_len=1,2'"]


def test_killed_sweep_resumes_and_skips_finished_jobs(tmp_path, jax_cache):
    # No hydra.sweep.dir: the default name from the overrides is what maps the re-run back.
    args = ["-m", "seq_len=3,4,5,6,7"] + SMALL
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    p = subprocess.Popen(RUN + args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = tmp_path / "results" / "runs" / "multirun" / sweep_name(args[1:])
    deadline = time.monotonic() + 240
    while len(summaries(sweep)) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the whole sweep, mid-way
    p.wait()
    before = {name: path.read_bytes() for name, path in summaries(sweep).items()}
    assert 2 <= len(before) < 5, "the sweep was not killed mid-way"

    out = run(args, tmp_path, jax_cache)
    assert (out.stdout + out.stderr).count("already holds a finished run") == len(before)
    assert f"5 jobs: 5 ok ({len(before)} skipped: finished earlier)" in out.stderr
    after = summaries(sweep)
    assert len(after) == 5
    for name, content in before.items():  # finished jobs were not run again
        assert after[name].read_bytes() == content
    df = load_sweep(sweep)
    assert sorted(df.seq_len.unique()) == [3, 4, 5, 6, 7] and len(df) == 2 * sum(range(3, 8))


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


PLANT = """
import rnnjax.job as job
_run = job.run_job
def run_job(cfg, out, resolved=None):
    if cfg.seq_len == 4:
        raise FloatingPointError("planted failure")
    return _run(cfg, out, resolved=resolved)
job.run_job = run_job
"""


def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, jax_cache):
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANT)  # imported by Python at start-up
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(JAX_COMPILATION_CACHE_DIR=jax_cache, PYTHONPATH=str(plant))
    sweep = tmp_path / "sweep"
    p = subprocess.run(RUN + ["-m", f"hydra.sweep.dir={sweep}", "seq_len=3,4,5"] + SMALL,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    closing = p.stderr.strip().splitlines()[-1]
    assert closing.startswith(f"rnnjax: sweep {sweep}: 3 jobs: 1 failed, 2 ok; failed: ")
    assert "seq_len=4" in closing and "FloatingPointError: planted failure" in closing
    failed = [d for d in sweep.iterdir() if d.is_dir() and job_status(d) == "failed"]
    assert len(failed) == 1 and "seq_len=4" in failed[0].name
    summary = json.loads((failed[0] / "summary.json").read_text())
    assert summary["error"] == "FloatingPointError: planted failure"
    assert "sitecustomize.py" in summary["traceback"] and summary["config"]["seq_len"] == 4
    with pytest.warns(UserWarning, match="skipped 1 failed job"):
        df = load_sweep(sweep)
    assert sorted(df.seq_len.unique()) == [3, 5]

    # Without the fault, a re-run runs the failed job only.
    env.pop("PYTHONPATH")
    p = subprocess.run(RUN + ["-m", f"hydra.sweep.dir={sweep}", "seq_len=3,4,5"] + SMALL,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "3 jobs: 3 ok (2 skipped: finished earlier)" in p.stderr

    # A single run that fails exits 1 with one line.
    env["PYTHONPATH"] = str(plant)
    p = subprocess.run(RUN + [f"hydra.run.dir={tmp_path / 'one'}", "seq_len=4"] + SMALL,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "rnnjax: error: the job failed: FloatingPointError: planted failure")
