"""The command line: the `rnnjax` dispatcher in-process, and the Hydra app in-process and once
end to end through a subprocess as a user runs it. (Sweeps, bad input and directory names,
in-process: test_sweep.py; the installed command: test_install.py.)"""

import gc
import importlib
import json
import logging
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, exit_code_of
from helpers import compose_cfg, run
from numpy_bptt import bptt

import rnnjax.cli
from rnnjax import load_summaries, load_sweep
from rnnjax.app.job import run_job
from rnnjax.app.results import config_schema_columns
from rnnjax.cli import COMMANDS, _call
from rnnjax.cli import main as cli_main

COLUMNS = ["seed", "t", "grad_norm", "param_grad_norm", "train_step", "activation", "init",
           "task", "seq_len", "hidden_size", "batch_size", "loss_at", "dtype", "init_std",
           "init_gain", "init_radius"]


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


@pytest.mark.e2e
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


@pytest.mark.slow  # float64 end to end: also tests/test_job.py's underflow test
@pytest.mark.e2e
def test_float64_really_computes_in_float64(tmp_path, app):
    job = tmp_path / "job"
    assert app(f"hydra.run.dir={job}", "dtype=float64", "activation=tanh", "init=gaussian",
               "init.gain=1.2", "seq_len=10", "hidden_size=6", "batch_size=2", "seeds=2",
               "probe.loss_at=all").code == 0
    assert np.load(job / "params.npz")["W_hh"].dtype == np.float64
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.dtype == "float64").all()
    for s, (g, pg) in enumerate(recompute(job, "tanh", "all")):
        rows = df[df.seed == s].sort_values("t")
        np.testing.assert_allclose(rows.grad_norm, g, rtol=1e-10)
        np.testing.assert_allclose(rows.param_grad_norm, pg, rtol=1e-10)


@pytest.mark.e2e
def test_timemachine_task(tmp_path, app, timemachine_file):
    job = tmp_path / "job"
    assert app(f"hydra.run.dir={job}", "task=timemachine", f"task.path={timemachine_file}",
               "seq_len=8", "hidden_size=8", "batch_size=4", "seeds=2").code == 0
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert (df.task == "timemachine").all() and (df.vocab_size == 28).all()
    x = np.load(job / "batch.npz")["x"]
    assert x.max() < 28 and (x != 1).all()  # real text: letters and spaces, never <unk>


@pytest.mark.e2e
def test_training_job_and_divergence_is_data(tmp_path, app):
    job = tmp_path / "job"
    assert app(f"hydra.run.dir={job}", "task=adding", "seq_len=12", "hidden_size=8",
               "batch_size=8", "seeds=2", "train.steps=25", "train.log_every=10",
               "train.optimizer=adam", "train.lr=0.01", "train.clip=0.5").code == 0
    m = pd.read_parquet(job / "metrics.parquet")
    assert list(m.train_step.unique()) == [10, 20, 25] and len(m) == 6
    # the whole config as columns (test_job checks every value on a probe)
    assert {c.name for c in config_schema_columns()} < set(m.columns)
    assert (m.train_clip == 0.5).all() and (m.train_optimizer == "adam").all()
    assert (m.train_steps == 25).all() and m.train_truncate.isna().all()
    assert m.train_ppl.isna().all() and np.isfinite(m.val_loss).all()  # regression: no ppl
    g = pd.read_parquet(job / "grad_norms.parquet")
    assert sorted(g.train_step.unique()) == [0, 10, 20, 25] and (g.loss_at == "last").all()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["training"]["steps"] == 25
    assert 0 <= summary["training"]["clip_fraction"] <= 1

    bad = tmp_path / "bad"  # an IRNN with gain 3 overflows float32 in its first step
    assert app(f"hydra.run.dir={bad}", "task=adding", "activation=relu", "init=identity",
               "init.gain=3", "seq_len=200", "hidden_size=8", "batch_size=4", "seeds=2",
               "train.steps=3").code == 0
    summary = json.loads((bad / "summary.json").read_text())
    assert summary["status"] == "nonfinite"
    assert summary["training"]["diverged_seeds"] == {"0": 0, "1": 0}
    assert (bad / "metrics.parquet").is_file()




@pytest.mark.e2e
def test_init_value_list_is_vmapped_in_one_job(tmp_path, caplog):
    common = ["init=gaussian", "probe.loss_at=last", "seq_len=15", "hidden_size=6",
              "batch_size=3", "seeds=2"]
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        run_job(compose_cfg(["init.gain=[0.5,2.0]"] + common), tmp_path / "list")
    assert "gaussian g=" not in caplog.text and "gaussian gain=0.5" in caplog.text
    df = load_sweep(tmp_path / "list")
    assert sorted(df.job.unique()) == [".[init.gain=0.5]", ".[init.gain=2]"]
    summaries = load_summaries(tmp_path / "list")
    assert sorted(summaries["init_gain"]) == [0.5, 2.0]
    for gain in (2.0,):  # the same numbers as a job of that value alone
        run_job(compose_cfg([f"init.gain={gain}"] + common), tmp_path / str(gain))
        one = pd.read_parquet(tmp_path / str(gain) / "grad_norms.parquet")
        mine = df[df.init_gain == gain]
        np.testing.assert_array_equal(mine.grad_norm.to_numpy(), one.grad_norm.to_numpy())
        s_one = load_summaries(tmp_path / str(gain)).iloc[0]
        s_mine = summaries[summaries["init_gain"] == gain].iloc[0]
        assert s_mine["headline.log10_slope_per_step_back"] == s_one[
            "headline.log10_slope_per_step_back"]


# ------------------------------------------------------------------ the rnnjax command, in-process


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`cli(*argv) -> (exit code, stdout, stderr)`: `rnnjax ARGV` in-process, in tmp_path."""
    monkeypatch.chdir(tmp_path)
    absl = sys.modules.get("absl.logging")
    if absl is not None:  # Hydra's logging setup would close pytest's stream (see test_sweep)
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)

    def call(*argv):
        code = exit_code_of(cli_main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_help_lists_every_command(cli):
    code, out, _ = cli("--help")
    assert code == 0 and out.startswith("usage: rnnjax COMMAND")
    for name, command in COMMANDS.items():
        assert f"  {name} {command.usage}" in out
    assert set(COMMANDS) == {"run", "report", "reproduce", "bench", "bench-train", "docs"}


@pytest.mark.parametrize("argv,says", [
    (["frobnicate"], "rnnjax: error: unknown command 'frobnicate'; allowed: run, report, "
                     "reproduce, bench, bench-train"),
    ([], "rnnjax: error: a command is required: run, report"),
    (["--run"], "rnnjax: error: unknown command '--run'"),
])
def test_unknown_or_missing_command_is_one_line(cli, argv, says):
    code, out, err = cli(*argv)
    assert code == 2 and out == "" and err.startswith(says) and err.count("\n") == 1


def test_report_messages_name_the_command_it_was_called_by(cli, tmp_path):
    code, out, err = cli("report", str(tmp_path / "missing"))
    assert code == 2 and out == ""  # "report.py: error: ..." before
    assert err == f"rnnjax report: error: '{tmp_path / 'missing'}' is not a directory\n"


def test_ctrl_c_while_a_command_loads_is_one_line(cli, monkeypatch):
    # Ctrl-C in the first second (JAX importing) printed a KeyboardInterrupt traceback.
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnjax.cli, "importlib", SimpleNamespace(import_module=interrupted))
    try:
        code, out, err = cli("reproduce", "--only", "fig1_vanishing_vs_length")
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped rnnjax.cli.main")
    assert (code, out, err) == (130, "", "rnnjax reproduce: interrupted\n")


@pytest.mark.parametrize("where", ["gc callback", "anywhere"])
def test_ctrl_c_while_a_command_loads_waits_for_it_and_stops_it(where, cli, tmp_path,
                                                                 monkeypatch):
    """Ctrl-C while the subcommand's modules load. In a garbage-collector callback (JAX's,
    before `run` set its handler) Python printed "Exception ignored ... KeyboardInterrupt" and
    the sweep ran to the end, exit 0. Elsewhere it cut an import off halfway: OmegaConf's,
    interrupted so, raised an AttributeError traceback, exit 1."""
    load = importlib.import_module
    unraisable, loaded = [], []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def pressed(phase=None, info=None):  # what Python does when SIGINT arrives there
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    def loading(name):
        if where == "gc callback":
            gc.callbacks.append(pressed)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(pressed)
        else:
            pressed()
        module = load(name)
        loaded.append(name)
        return module

    monkeypatch.setattr(rnnjax.cli, "importlib", SimpleNamespace(import_module=loading))
    try:
        code, out, err = cli("run", "seq_len=3", "hidden_size=4", "batch_size=2", "seeds=2")
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped rnnjax.cli.main")
    assert (code, out, err) == (130, "", "rnnjax run: interrupted\n")
    assert loaded == ["rnnjax.sweeps.app"] and unraisable == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["report", "reproduce", "bench", "bench-train"])
def test_each_command_has_help(cli, name):
    code, out, _ = cli(name, "--help")
    # named as it was called (report.py and reproduce.py named themselves so before)
    assert code == 0 and out.startswith(f"usage: rnnjax {name} ") and "--help" in out


@pytest.mark.e2e
def test_run_help_lists_groups(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0 and "Usage: rnnjax run [KEY=VALUE ...]" in out
    cells = sorted(f.stem for f in (ROOT / "conf" / "cell").glob("*.yaml"))
    assert {"gru", "lru", "lstm", "urnn", "vanilla"} <= set(cells)
    tasks = sorted(f.stem for f in (ROOT / "conf" / "task").glob("*.yaml"))
    assert {"adding", "copy", "random", "timemachine", "selective_copy"} <= set(tasks)
    for line in ("activation: linear, relu, sigmoid, tanh",
                 "cell: " + ", ".join(cells),
                 "init: gaussian, identity, normal, orthogonal, spectral, xavier",
                 "task: " + ", ".join(tasks),
                 "logger: csv, mlflow, none, tensorboard, wandb"):
        assert line in out
    experiments = sorted(f.stem for f in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert "experiment: " + ", ".join(experiments) in out
    # every registered cell's one line, from the registry (a plugin's too)
    from rnnjax.core.cells import registry

    listed = out[out.index("Cells (cell=NAME"):].splitlines()[1:len(registry.CELLS) + 1]
    assert [ln.split()[0] for ln in listed] == list(registry.CELLS)
    assert all(ln.endswith(registry.get(ln.split()[0]).help) for ln in listed)
    code, out, _ = cli("run", "--hydra-help")
    assert code == 0 and "Hydra (" in out and "--multirun" in out


@pytest.mark.e2e
def test_run_writes_under_the_working_directory(cli, tmp_path):
    code, _, err = cli("run", "seq_len=3", "hidden_size=2", "batch_size=1", "seeds=1")
    assert code == 0, err
    job = tmp_path / "results" / "runs" / "single" / "batch_size=1,hidden_size=2,seeds=1,seq_len=3"
    assert json.loads((job / "summary.json").read_text())["status"] == "ok"
    code, _, err = cli("run", "activation=softsign")  # Hydra's app: its errors, its exit code
    assert code != 0 and "softsign" in err


def test_subcommands_get_their_program_name():
    seen = {}

    def with_prog(argv, prog="x"):
        seen["with"] = (argv, prog)
        return 3

    def without(argv):
        seen["without"] = (argv, sys.argv[0])

    argv0 = sys.argv[0]
    assert _call(with_prog, ["a"], "rnnjax run") == 3 and seen["with"] == (["a"], "rnnjax run")
    assert _call(without, ["b"], "rnnjax bench") == 0
    assert seen["without"] == (["b"], "rnnjax bench") and sys.argv[0] == argv0
