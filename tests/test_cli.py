"""The Hydra app end to end, through a subprocess as a user runs it. (Sweeps, bad input and
directory names, in-process: test_sweep.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from conftest import ROOT
from numpy_bptt import bptt

from rnnjax import load_summaries, load_sweep

RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
COLUMNS = ["seed", "t", "grad_norm", "param_grad_norm", "train_step", "activation", "init",
           "task", "seq_len", "hidden_size", "batch_size", "loss_at", "dtype", "init_std",
           "init_gain", "init_radius"]


def run(args, cwd, jax_cache, check=True):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # compact errors
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    p = subprocess.run(RUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def recompute(job, activation, loss_at):
    """Every number of a job from its params.npz and batch.npz, by the numpy BPTT."""
    params, batch = np.load(job / "params.npz"), np.load(job / "batch.npz")
    out = []
    for s in range(params["W_hh"].shape[0]):
        p = {k: params[k][s] for k in params.files}
        _, dH, dA, h_prev, _ = bptt(p, batch["x"][s], batch["y"][s], activation, loss_at)
        out.append((np.sqrt((dH**2).sum(axis=(1, 2))),
                    np.array([np.linalg.norm(h_prev[t].T @ dA[t]) for t in range(len(dA))])))
    return out


def test_single_run_files_schema_and_numbers(tmp_path, jax_cache):
    job = tmp_path / "job"
    p = run([f"hydra.run.dir={job}", "activation=sigmoid", "init=orthogonal", "init.gain=1.5",
             "seq_len=12", "hidden_size=8", "batch_size=3", "seeds=3", "seed=5",
             "probe.loss_at=last"], tmp_path, jax_cache)
    assert "log10 grad_norm per step back" in p.stdout + p.stderr
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert set(COLUMNS) <= set(df.columns)
    assert len(df) == 3 * 12
    assert sorted(df.seed.unique()) == [5, 6, 7] and list(df.t[:12]) == list(range(1, 13))
    assert (df.train_step == 0).all() and (df.activation == "sigmoid").all()
    assert (df.init_gain == 1.5).all() and df.init_std.isna().all()
    params, batch = np.load(job / "params.npz"), np.load(job / "batch.npz")
    assert params["W_xh"].shape == (3, 28, 8) and params["W_hh"].shape == (3, 8, 8)
    assert params["b_h"].shape == (3, 8) and params["W_hq"].shape == (3, 8, 28)
    assert params["b_q"].shape == (3, 28) and params["W_hh"].dtype == np.float32
    assert batch["x"].shape == batch["y"].shape == (3, 3, 12)
    for s, (g, pg) in enumerate(recompute(job, "sigmoid", "last")):
        rows = df[df.seed == 5 + s].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, g, rtol=2e-4)
        np.testing.assert_allclose(rows.param_grad_norm, pg, rtol=2e-4)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["wall_time_s"] > 0
    assert summary["config"]["init"] == {"name": "orthogonal", "std": None, "gain": 1.5,
                                         "radius": None}
    assert np.isfinite(summary["headline"]["log10_slope_per_step_back"])


def test_float64_really_computes_in_float64(tmp_path, jax_cache):
    job = tmp_path / "job"
    run([f"hydra.run.dir={job}", "dtype=float64", "activation=tanh", "init=gaussian",
         "init.gain=1.2", "seq_len=10", "hidden_size=6", "batch_size=2", "seeds=2"],
        tmp_path, jax_cache)
    assert np.load(job / "params.npz")["W_hh"].dtype == np.float64
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.dtype == "float64").all()
    for s, (g, pg) in enumerate(recompute(job, "tanh", "all")):
        rows = df[df.seed == s].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, g, rtol=1e-10)
        np.testing.assert_allclose(rows.param_grad_norm, pg, rtol=1e-10)


def test_timemachine_task(tmp_path, jax_cache, timemachine_file):
    job = tmp_path / "job"
    run([f"hydra.run.dir={job}", "task=timemachine", f"task.path={timemachine_file}",
         "seq_len=8", "hidden_size=8", "batch_size=4", "seeds=2"], tmp_path, jax_cache)
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.task == "timemachine").all() and (df.vocab_size == 28).all()
    x = np.load(job / "batch.npz")["x"]
    assert x.max() < 28 and (x != 1).all()  # real text: letters and spaces, never <unk>


def test_training_job_and_divergence_is_data(tmp_path, jax_cache):
    job = tmp_path / "job"
    run([f"hydra.run.dir={job}", "task=adding", "seq_len=12", "hidden_size=8", "batch_size=8",
         "seeds=2", "train.steps=25", "train.log_every=10", "train.optimizer=adam",
         "train.lr=0.01", "train.clip=0.5"], tmp_path, jax_cache)
    m = pd.read_parquet(job / "metrics.parquet")
    assert list(m.train_step.unique()) == [10, 20, 25] and len(m) == 6
    assert m.train_ppl.isna().all() and np.isfinite(m.val_loss).all()  # regression: no ppl
    g = pd.read_parquet(job / "grad_norms.parquet")
    assert sorted(g.train_step.unique()) == [0, 10, 20, 25] and (g.loss_at == "last").all()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["training"]["steps"] == 25
    assert 0 <= summary["training"]["clip_fraction"] <= 1

    bad = tmp_path / "bad"  # an IRNN with gain 3 overflows float32 in its first step
    p = run([f"hydra.run.dir={bad}", "task=adding", "activation=relu", "init=identity",
             "init.gain=3", "seq_len=200", "hidden_size=8", "batch_size=4", "seeds=2",
             "train.steps=3"], tmp_path, jax_cache)
    assert p.returncode == 0
    summary = json.loads((bad / "summary.json").read_text())
    assert summary["status"] == "nonfinite"
    assert summary["training"]["diverged_seeds"] == {"0": 0, "1": 0}
    assert (bad / "metrics.parquet").is_file()


def test_help_lists_groups(tmp_path, jax_cache):
    p = run(["--help"], tmp_path, jax_cache)
    for line in ("activation: linear, relu, sigmoid, tanh",
                 "cell: gru, lru, lstm, urnn, vanilla",
                 "init: gaussian, identity, normal, orthogonal, spectral, xavier",
                 "task: adding, copy, random, timemachine",
                 "logger: csv, mlflow, none, tensorboard, wandb"):
        assert line in p.stdout
    experiments = sorted(f.stem for f in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert "experiment: " + ", ".join(experiments) in p.stdout


def test_init_value_list_is_vmapped_in_one_job(tmp_path, jax_cache):
    common = ["init=gaussian", "probe.loss_at=last", "seq_len=15", "hidden_size=6",
              "batch_size=3", "seeds=2"]
    p = run([f"hydra.run.dir={tmp_path / 'list'}", "init.gain=[0.5,2.0]"] + common, tmp_path,
            jax_cache)
    assert "gaussian g=" not in p.stdout and "gaussian gain=0.5" in p.stdout + p.stderr
    df = load_sweep(tmp_path / "list")
    assert sorted(df.job.unique()) == [".[init.gain=0.5]", ".[init.gain=2]"]
    summaries = load_summaries(tmp_path / "list")
    assert sorted(summaries["config.init.gain"]) == [0.5, 2.0]
    for gain in (2.0,):  # the same numbers as a job of that value alone
        run([f"hydra.run.dir={tmp_path / str(gain)}", f"init.gain={gain}"] + common, tmp_path,
            jax_cache)
        one = pd.read_parquet(tmp_path / str(gain) / "grad_norms.parquet")
        mine = df[df.init_gain == gain]
        np.testing.assert_array_equal(mine.grad_norm.to_numpy(), one.grad_norm.to_numpy())
        s_one = load_summaries(tmp_path / str(gain)).iloc[0]
        s_mine = summaries[summaries["config.init.gain"] == gain].iloc[0]
        assert s_mine["headline.log10_slope_per_step_back"] == s_one[
            "headline.log10_slope_per_step_back"]
