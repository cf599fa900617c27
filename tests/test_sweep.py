"""Runs and sweeps from the command line (rnnjax.sweeps.app and its Hydra sweeper), in-process: the
app's `main` with an argv, in a temporary working directory. Two subprocess tests cover what
only a real process shows: Ctrl-C, and a job directory held by another live process.

Names: job and sweep directories are named by their overrides, safely and within bounds; a
single run gets its own directory. Sweeps: the job list is Hydra's (the command line wins over
an experiment's grid), every job is validated before any is launched, finished jobs are
skipped without being launched, and every job is accounted for in the closing line, also after
Ctrl-C or a failure.
"""

import gc
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import jax
import pytest
from helpers import RUN, SMALL, TINY
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

import rnnjax.app.interrupt
import rnnjax.app.job
from rnnjax import load_sweep
from rnnjax.app.config import register_configs
from rnnjax.app.job import JobBusy, job_lock
from rnnjax.app.results import job_status
from rnnjax.sweeps.app import (
    CONF_DIR,
    RUN_ROOT,
    SWEEP_ROOT,
    job_list,
    job_name,
    register_sweeper,
    run_dir_override,
    sweep_dir_override,
    sweep_name,
)

RESULT_FILES = {"summary.json", "grad_norms.parquet", "params.npz", "batch.npz"}
# A text of 13200 characters with every letter: enough windows for task=timemachine.
TEXT = "The quick brown fox jumps over the lazy dog. " * 300


def plant(monkeypatch, when, error):
    """Makes rnnjax.app.job.run_job raise `error` for the jobs whose config satisfies `when`."""
    run_job = rnnjax.app.job.run_job

    def planted(cfg, out, resolved=None):
        if when(cfg):
            raise error
        return run_job(cfg, out, resolved=resolved)

    monkeypatch.setattr(rnnjax.app.job, "run_job", planted)


def summaries(root):
    return {p.parent.name: p for p in Path(root).rglob("summary.json")}


# --------------------------------------------------------------------------------- names


def test_sweep_name_is_order_free_and_ignores_hydra_and_resume():
    a = sweep_name(["activation=tanh,relu", "seq_len=16", "hydra/launcher=local_parallel"])
    b = sweep_name(["resume=false", "seq_len=16", "activation=tanh,relu", "hydra.verbose=true"])
    assert a == b == "activation=tanh,relu__seq_len=16"
    assert sweep_name([]) == "default"
    spaced = sweep_name(["task.path=/data/my text.txt"])
    assert spaced.startswith("task.path=_data_my_text.txt-") and len(spaced) == 27 + 13
    assert spaced != sweep_name(["task.path=_data_my_text.txt"])
    long = sweep_name([f"init.gain={'1,' * 100}1"])
    assert len(long) == 120 and long != sweep_name([f"init.gain={'1,' * 101}1"])
    assert sweep_dir_override(["seq_len=1,2"]) == []  # not a multirun
    assert sweep_dir_override(["-m", "hydra.sweep.dir=x", "seq_len=1,2"]) == []
    assert sweep_dir_override(["-m", "seq_len=1,2"]) == [
        f"hydra.sweep.dir='{SWEEP_ROOT}/seq_len=1,2'"]


def test_job_names_are_safe_bounded_and_deterministic():
    assert job_name(["seq_len=16", "activation=tanh"]) == "activation=tanh,seq_len=16"
    assert job_name([]) == job_name(["resume=false"]) == "default"
    for value in ["../../../evil.txt", "/etc/passwd", "..", ".hidden", "a\\b", "x" * 249,
                  "../" * 10 + "y" * 240]:
        overrides = ["task=timemachine", f"task.path={value}"]
        name = job_name(overrides)
        assert Path(name).name == name and "/" not in name and "\\" not in name
        assert not name.startswith(".") and len(name) <= 120
        assert name == job_name(overrides[::-1])  # the same command resumes
    assert job_name(["task.path=a/b"]) != job_name(["task.path=a_b"])  # no shared directory
    long = job_name([f"task.path={'x' * 249}"])
    assert long != job_name([f"task.path={'x' * 248}"])


def test_single_runs_are_named_by_their_overrides():
    assert run_dir_override(["seq_len=16", "activation=tanh", "hydra.verbose=true"]) == [
        f"hydra.run.dir='{RUN_ROOT}/activation=tanh,seq_len=16'"]
    assert run_dir_override([]) == [f"hydra.run.dir='{RUN_ROOT}/default'"]
    assert run_dir_override(["hydra.run.dir=here", "seq_len=16"]) == []
    assert run_dir_override(["-m", "seq_len=16"]) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_two_single_runs_in_the_same_second_keep_their_own_results(app, tmp_path, monkeypatch):
    class Frozen(datetime):  # Hydra's ${now:...} resolver: both runs start in the same second
        @classmethod
        def now(cls, tz=None):
            return datetime(2025, 1, 1, 12, 0, 0)

    monkeypatch.setattr("hydra.core.utils.datetime", Frozen)
    for seed in (0, 1):
        assert app(f"seed={seed}", *TINY).code == 0
    jobs = summaries(tmp_path / "results")
    names = {seed: job_name([f"seed={seed}", *TINY]) for seed in (0, 1)}
    assert sorted(jobs) == sorted(names.values())
    assert names[0] == "batch_size=2,hidden_size=4,seed=0,seeds=2,seq_len=3"
    for seed, name in names.items():
        assert jobs[name].parent.parent == tmp_path / RUN_ROOT
        assert json.loads(jobs[name].read_text())["config"]["seed"] == seed
    # Re-running a command (its overrides in any order) resumes its run.
    before = jobs[names[0]].read_bytes()
    r = app(*TINY[::-1], "seed=0")
    assert r.code == 0 and "already holds a finished run" in r.err
    assert jobs[names[0]].read_bytes() == before


@pytest.mark.e2e
@pytest.mark.slow
def test_a_job_directory_another_process_holds_is_left_alone(app, tmp_path):
    # A single run: one line naming the directory and the process, exit 1, nothing written.
    run = tmp_path / RUN_ROOT / job_name(TINY)
    with job_lock(run):
        r = app(*TINY)
    assert r.code == 1
    assert r.err.splitlines() == [
        f"rnnjax: error: {os.path.abspath(run)} is in use by process {os.getpid()} on "
        f"{socket.gethostname()}, which runs the same job: wait for it (the same command then "
        "resumes) or stop it"]
    assert not {p.name for p in run.iterdir()} & RESULT_FILES

    # A sweep: that job is not run (and its files are not touched), the others are.
    sweep = tmp_path / "sweep"
    held = sweep / job_name(["seed=1", *TINY])
    with job_lock(held):
        r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1", *TINY)
    assert r.code == 1
    assert r.closing().startswith(f"rnnjax: sweep {sweep}: 2 jobs: 1 not run, 1 ok; not run: "
                                  f"seed=1 {' '.join(TINY)} ({os.path.abspath(held)} is in use "
                                  f"by process {os.getpid()} on ")
    assert not {p.name for p in held.iterdir()} & RESULT_FILES
    assert job_status(sweep / job_name(["seed=0", *TINY])) == "ok"
    r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1", *TINY)  # released: it runs
    assert r.code == 0 and "2 jobs: 2 ok (1 skipped: finished earlier)" in r.closing()


def test_lock_is_exclusive_and_released():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with job_lock(d):
            with pytest.raises(JobBusy, match=f"in use by process {os.getpid()} "), job_lock(d):
                pass
        with job_lock(d):  # released when the block ends, also by an exception
            pass


# --------------------------------------------------------------------------------- job lists


def experiment_params(name):
    """An experiment file's `hydra.sweeper.params`, as Hydra composes them."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def test_command_line_wins_over_an_experiment_grid(app, monkeypatch):
    params = experiment_params("irnn_adding")
    assert params == {"activation": "tanh,relu", "init": "normal,xavier,identity"}
    sweeper = register_sweeper()
    assert Plugins.instance().class_name_to_class[
        "hydra_plugins.rnnjax_sweeper.rnnjax_sweeper.RnnjaxSweeper"] is sweeper
    jobs = job_list(sweeper(max_batch_size=None, params=params),
                    ["+experiment=irnn_adding", "activation=relu", "init=identity,normal",
                     "train.steps=300"])
    assert sorted(" ".join(sorted(j)) for j in jobs) == [
        f"+experiment=irnn_adding activation=relu init={i} train.steps=300"
        for i in ("identity", "normal")]
    # Only the experiment's grid: all 6 jobs.
    assert len(job_list(sweeper(max_batch_size=None, params=params),
                        ["+experiment=irnn_adding"])) == 6

    # End to end (the jobs faked: the sweep is under test): the closing line counts the jobs
    # Hydra runs, and validation checks those (init.gain is invalid for the experiment's
    # init=normal and init=xavier, which the command line replaces).
    ran = []

    def fake(cfg, out, resolved=None):
        ran.append((cfg.activation.name.value, cfg.init.name.value, cfg.init.gain))
        return {"status": "ok", "config": resolved}

    monkeypatch.setattr(rnnjax.app.job, "run_job", fake)
    r = app("-m", "hydra.sweep.dir=sweep", "+experiment=irnn_adding", "activation=relu",
            "init=identity", "init.gain=0.5,2.0", "train.steps=300")
    assert r.code == 0, r.err
    assert r.closing() == "rnnjax: sweep sweep: 2 jobs: 2 ok"
    assert sorted(ran) == [("relu", "identity", 0.5), ("relu", "identity", 2.0)]


# One job per case: (args, text the one-line message names).
BAD = [
    (["seq_len=0"], "seq_len=0 is invalid: must be an integer >= 1"),
    (["seeds=0"], "seeds=0 is invalid"),
    (["init=orthogonal", "init.std=2"], "init.std is not a parameter of init=orthogonal"),
    (["task=timemachine", "task.path=/no/such/file.txt"], "task.path: cannot read"),
    (["+train.clipp=1"], "train.clipp is not a config key; allowed in train: steps, "),
    (["activation=null"], "is invalid: activation takes option names"),  # before any job
    (["activation=softsign"], "activation=softsign is not an option; allowed: "),  # likewise
    # Hydra's errors, which it printed in 6 to 10 lines
    (["batch_size=abc"], "batch_size is invalid: Value 'abc' of type 'str' could not be "
                         "converted to Integer"),
    (["dtype=float16"], "dtype is invalid: Invalid value 'float16', expected one of "
                        "[float32, float64]"),
    (["train.clipp=1"], "train.clipp is not a config key; allowed in train: steps, "),
    (["seq_len=[3"], "cannot parse seq_len="),  # before any job
    (["~seq_len"], "~seq_len is not supported: rnnjax's config keys cannot be deleted; set "
                   "seq_len=VALUE instead"),  # it ran seq_len=64 in the directory of `default`
]


@pytest.mark.parametrize("args,message", BAD)
@pytest.mark.e2e
def test_bad_input_fails_cleanly_and_writes_nothing(app, tmp_path, args, message):
    key, bad = (args[-1].split("=", 1) + [""])[:2]
    good = {"seq_len": "3", "seeds": "2", "init.std": "null", "task.path": None,
            "+train.clipp": None, "activation": "tanh", "batch_size": "2", "dtype": "float32",
            "train.clipp": None, "~seq_len": None}
    sweep = (["seed=0,1", *args] if good[key] is None
             else [*args[:-1], f"{key}={good[key]},{bad}"])
    before_any_job = args[-1].startswith(("activation=", "seq_len=[", "~"))
    for mode in (["hydra.run.dir=out", *args], ["-m", "hydra.sweep.dir=out", *sweep]):
        r = app(*mode)
        assert r.code == 2
        assert message in r.err and "Traceback" not in r.err + r.out
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rnnjax: error: ")
        if mode[0] == "-m" and not before_any_job and good[key] is not None:  # job by job
            assert lines[0].endswith(")") and "(in job " in lines[0]
        assert list(tmp_path.iterdir()) == [], "something was written"


def test_hydra_full_error_still_raises_hydras_errors(app, monkeypatch):
    # HYDRA_FULL_ERROR=1 asks for Hydra's error with its traceback; unset, the one line.
    import hydra.errors

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(hydra.errors.ConfigCompositionException):
        app("hydra.run.dir=out", "train.clipp=1")
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    assert app("hydra.run.dir=out", "train.clipp=1").code == 2
    assert "HYDRA_FULL_ERROR" not in os.environ


# --------------------------------------------------------------------------------- sweeps


@pytest.mark.e2e
def test_sweep_runs_jobs_i_of_n_and_skips_finished_ones_without_launching(app, tmp_path,
                                                                          monkeypatch):
    launched = []
    # Hydra's launcher class as its plugin discovery (which re-imports it) finds it.
    launcher = Plugins.instance().class_name_to_class[
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher"]
    launch = launcher.launch

    def spy(self, job_overrides, initial_job_idx):
        launched.extend(" ".join(o for o in job if not o.startswith("hydra."))
                        for job in job_overrides)
        return launch(self, job_overrides, initial_job_idx)

    monkeypatch.setattr(launcher, "launch", spy)
    grid = ["seed=0,1", "init.std=0.01,0.1", *TINY]
    r = app("-m", *grid)
    sweep = Path(SWEEP_ROOT) / sweep_name(grid)
    assert r.code == 0, r.err
    for i in range(1, 5):
        # its start, its initialization, the probe's compile (start, time taken), the probe's
        # time and its headline line
        assert r.out.count(f"job {i} of 4: ") == 6
        assert f"job {i} of 4: probe: compiled in " in r.out
    assert r.closing() == f"rnnjax: sweep {sweep}: 4 jobs: 4 ok"
    assert r.err.splitlines()[-2:] == [
        f"rnnjax: report: rnnjax report {sweep}",
        f'rnnjax: in Python: rnnjax.load_sweep("{sweep}")']
    df = load_sweep(sweep)
    assert df.job.nunique() == 4 and len(df) == 4 * 2 * 3
    assert (df.groupby("job").size() == 2 * 3).all()  # 2 networks, 3 steps each
    assert df.groupby("init_std").seed.unique().map(sorted).to_dict() == {
        0.01: [0, 1, 2], 0.1: [0, 1, 2]}  # jobs of seed=0 and seed=1
    assert len(launched) == 4

    # The same command with one more value: the finished jobs are skipped, not launched.
    before = {p: p.read_bytes() for p in (tmp_path / sweep).rglob("*") if p.is_file()
              and p.name not in ("multirun.yaml", "sweep.json")}
    launched.clear()
    more = ["seed=0,1,2", "init.std=0.01,0.1", *TINY]
    r = app("-m", f"hydra.sweep.dir='{sweep}'", *more)
    assert r.code == 0, r.err
    assert r.closing() == f"rnnjax: sweep {sweep}: 6 jobs: 6 ok (4 skipped: finished earlier)"
    assert sorted(launched) == sorted(f"seed=2 init.std={v} {' '.join(TINY)}"
                                      for v in ("0.01", "0.1"))
    assert r.out.count(" skipped: ") == 4 and "job 1 of 6 skipped: " in r.out
    for path, content in before.items():  # not even Hydra's .hydra/ files were rewritten
        assert path.read_bytes() == content, path

    # resume=false launches a finished job again.
    launched.clear()
    r = app("-m", f"hydra.sweep.dir='{sweep}'", "seed=0", "init.std=0.01", *TINY, "resume=false")
    assert r.code == 0 and r.closing() == f"rnnjax: sweep {sweep}: 1 jobs: 1 ok"
    assert len(launched) == 1
    again = sweep / job_name(["seed=0", "init.std=0.01", *TINY]) / "summary.json"
    assert (tmp_path / again).read_bytes() != before[tmp_path / again]


@pytest.mark.e2e
def test_failing_job_is_recorded_and_the_sweep_goes_on(app, tmp_path, monkeypatch):
    plant(monkeypatch, lambda cfg: cfg.seed == 1, FloatingPointError("planted failure"))
    sweep = tmp_path / "sweep"
    r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", *TINY)
    assert r.code == 1 and "Traceback" not in r.err
    assert r.closing() == (f"rnnjax: sweep {sweep}: 3 jobs: 1 failed, 2 ok; failed: seed=1 "
                           f"{' '.join(TINY)} (FloatingPointError: planted failure)")
    failed = sweep / job_name(["seed=1", *TINY])
    assert job_status(failed) == "failed"
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["error"] == "FloatingPointError: planted failure"
    assert "test_sweep.py" in summary["traceback"] and summary["config"]["seed"] == 1
    with pytest.warns(UserWarning, match="skipped 1 failed job"):
        df = load_sweep(sweep)
    assert sorted(df.seed.unique()) == [0, 1, 2, 3]  # seeds 0-1 and 2-3

    # Without the fault, a re-run runs the failed job only.
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", *TINY)
    assert r.code == 0 and "3 jobs: 3 ok (2 skipped: finished earlier)" in r.closing()

    # A single run that fails exits 1 with one line.
    plant(monkeypatch, lambda cfg: True, FloatingPointError("planted failure"))
    r = app("hydra.run.dir=one", *TINY)
    assert r.code == 1
    assert r.err.splitlines() == [
        "rnnjax: error: the job failed: FloatingPointError: planted failure"]


def test_whatever_the_launcher_raises_every_job_is_accounted_for(app, tmp_path, monkeypatch):
    # A launcher that runs the first job and then fails (as submitit does for a cancelled
    # SLURM task): the closing line lists the others as failed, with the launcher's error.
    launcher = Plugins.instance().class_name_to_class[
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher"]
    launch = launcher.launch

    def cancelled(self, job_overrides, initial_job_idx):
        launch(self, job_overrides[:1], initial_job_idx)
        raise RuntimeError("UncompletedJobError: job 4242_1 was cancelled")

    monkeypatch.setattr(launcher, "launch", cancelled)
    r = app("-m", "hydra.sweep.dir=sweep", "seed=0,1,2", *TINY)
    assert r.code == 1 and "Traceback" not in r.err
    assert r.closing() == (
        "rnnjax: sweep sweep: 3 jobs: 2 failed, 1 ok; failed: "
        + "; ".join(f"seed={s} {' '.join(TINY)} (RuntimeError: UncompletedJobError: job 4242_1 "
                    "was cancelled)" for s in (1, 2)))


@pytest.mark.e2e
def test_interrupted_sweep_says_one_line_and_the_same_command_resumes(app, tmp_path,
                                                                      monkeypatch):
    plant(monkeypatch, lambda cfg: cfg.seed == 1, KeyboardInterrupt())
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", *TINY]
    r = app(*args)
    assert r.code == 130
    assert r.err.splitlines() == [
        f"rnnjax: sweep {sweep} interrupted: 1 of 3 jobs finished; interrupted: seed=1 "
        f"{' '.join(TINY)}; 1 not started; the same command resumes the sweep"]
    first = (sweep / job_name(["seed=0", *TINY]) / "summary.json").read_bytes()

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = app(*args)
    assert r.code == 0 and "3 jobs: 3 ok (1 skipped: finished earlier)" in r.closing()
    assert (sweep / job_name(["seed=0", *TINY]) / "summary.json").read_bytes() == first

    # A single run: one line too.
    plant(monkeypatch, lambda cfg: True, KeyboardInterrupt())
    r = app("hydra.run.dir=one", *TINY)
    assert r.code == 130
    assert r.err.splitlines() == [
        f"rnnjax: interrupted: the job in {tmp_path / 'one'} did not finish; the same command "
        "resumes it"]


@pytest.mark.e2e
def test_ctrl_c_whose_exception_python_swallowed_still_stops_the_sweep(app, tmp_path,
                                                                      monkeypatch):
    """Ctrl-C during a garbage-collector callback (JAX registers one): Python hands the
    KeyboardInterrupt to sys.unraisablehook ("Exception ignored ... Traceback") and goes on.
    The sweep must stop anyway (it ran all 3 jobs, exit 0, in CI) and print no traceback (CI
    printed one)."""
    run_job = rnnjax.app.job.run_job
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def interrupt(phase, info):
        rnnjax.app.interrupt._raise(signal.SIGINT, None)

    def swallowed(cfg, out, resolved=None):
        summary = run_job(cfg, out, resolved=resolved)
        if cfg.seed == 0:
            gc.callbacks.append(interrupt)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(interrupt)
        return summary

    monkeypatch.setattr(rnnjax.app.job, "run_job", swallowed)
    sweep = tmp_path / "sweep"
    r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", *TINY)
    assert r.code == 130
    assert r.err.splitlines() == [
        f"rnnjax: sweep {sweep} interrupted: 1 of 3 jobs finished; interrupted: seed=1 "
        f"{' '.join(TINY)}; 1 not started; the same command resumes the sweep"]
    assert unraisable == []
    assert sys.unraisablehook == unraisable.append  # given back


def test_ctrl_c_while_jax_starts_its_backends_waits_for_them(app, tmp_path, monkeypatch):
    """Ctrl-C while JAX initialized its backends left JAX's TPU timer thread running: the
    interrupted sweep took 60 s to exit and printed a TPU warning (1 run in 10 of
    test_ctrl_c_in_a_real_sweep_prints_one_line). The signal waits until they are up."""
    real = jax.devices
    finished = []

    def devices(*args, **kwargs):
        if not finished:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(50):
                time.sleep(0.001)  # Python runs the handler here
            finished.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax, "devices", devices)
    sweep = tmp_path / "sweep"
    r = app("-m", f"hydra.sweep.dir={sweep}", "seed=0,1,2", *TINY)
    assert finished == [True]
    assert r.code == 130
    assert r.err.splitlines() == [
        f"rnnjax: sweep {sweep} interrupted: 0 of 3 jobs finished; interrupted: seed=0 "
        f"{' '.join(TINY)}; 2 not started; the same command resumes the sweep"]


@pytest.mark.e2e
def test_glob_sweeps_over_group_options(app, tmp_path):
    # Hydra's glob() over a group's options was refused ("takes option names").
    sweep = tmp_path / "sweep"
    r = app("-m", f"hydra.sweep.dir={sweep}", "activation=glob(*,exclude=[linear,relu])", *TINY)
    assert r.code == 0, r.err
    assert "2 jobs: 2 ok" in r.closing()
    assert sorted(load_sweep(sweep).activation.unique()) == ["sigmoid", "tanh"]


@pytest.mark.parametrize("override, message", [
    ("activation=glob(x*)", "activation=glob(x*) matches no option of activation; allowed: "
                            "linear, relu, sigmoid, tanh"),
    ("activation=tanh,foo", "activation=foo is not an option; allowed: linear, relu, sigmoid, "
                            "tanh"),
    ("+experiment=d2l", "experiment=d2l is not an option; allowed: curse_of_memory, "),
    ("hydra/launcher=local_parallel", "hydra/launcher=local_parallel needs the package "
                                      "'hydra-joblib-launcher': pip install 'rnnjax[parallel]'"),
    ("hydra/launcher=slurm", "hydra/launcher=slurm needs the package 'hydra-submitit-launcher': "
                             "pip install 'rnnjax[slurm]'"),
])
def test_bad_group_options_and_missing_launchers_give_one_line(override, message, capsys,
                                                               monkeypatch):
    # A launcher preset without its package was Hydra's 8 lines ("Could not load
    # 'hydra/launcher/joblib'"), an unknown option Hydra's 10.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit) as e:
        rnnjax.sweeps.app.check_group_options(["-m", override])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnjax: error: {message}") and err.count("\n") == 1, err


@pytest.mark.e2e
@pytest.mark.slow
def test_job_directories_stay_inside_the_sweep_and_are_bounded(app, tmp_path):
    # A relative path that climbs out of a nested working directory, and a 249-character
    # file name: job directories named after them must stay inside the sweep, within bounds.
    (tmp_path / "evil.txt").write_text(TEXT)
    long = "x" * 245 + ".txt"
    (tmp_path / long).write_text(TEXT)
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    values = f"../../../evil.txt,../../../{long}"
    r = app("-m", "task=timemachine", f"task.path={values}", "seq_len=3", "hidden_size=4",
            "batch_size=2", "seeds=2", cwd=cwd)
    assert r.code == 0, r.err
    sweep = cwd / SWEEP_ROOT / sweep_name(["task=timemachine", f"task.path={values}",
                                           "seq_len=3", *SMALL])
    assert "2 jobs: 2 ok" in r.closing()
    jobs = summaries(tmp_path)
    assert len(jobs) == 2 and all(p.parent.parent == sweep for p in jobs.values())
    assert all(len(name) <= 120 for name in jobs)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and cwd not in p.parents]
    assert sorted(p.name for p in outside) == sorted(["evil.txt", long])
    assert load_sweep(sweep).job.nunique() == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_in_a_real_sweep_prints_one_line(tmp_path, jax_cache):
    # SIGINT to the process group, as a terminal sends it, while the first job runs.
    args = ["-m", "hydra.sweep.dir=sweep", "seed=0,1,2", *TINY]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    p = subprocess.Popen(RUN + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    began = tmp_path / "sweep" / job_name(["seed=0", *TINY]) / ".hydra" / "overrides.yaml"
    deadline = time.monotonic() + 120
    while not began.is_file() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in out + err
    # Usually "0 of 3 jobs finished; interrupted: seed=0 ...; 2 not started" (a busy machine
    # may let the first job finish before the signal lands).
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"rnnjax: sweep sweep interrupted: (\d) of 3 jobs finished; "
                        rf"interrupted: seed=\d {' '.join(TINY)}; (\d) not started; the same "
                        rf"command resumes the sweep\n", err), err


@pytest.mark.e2e
@pytest.mark.slow
def test_hydra_mode_multirun_without_m_is_a_sweep(app, tmp_path):
    # rnnjax skips Hydra's first compose (only to read hydra.mode) unless the command sets it.
    sweep = tmp_path / "sweep"
    r = app("hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}", "seed=0,1", *TINY)
    assert r.code == 0 and r.closing() == f"rnnjax: sweep {sweep}: 2 jobs: 2 ok"
