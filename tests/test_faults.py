"""Resumable sweeps and faults: a killed sweep re-run completes with its finished jobs
skipped, a failing job is recorded and the sweep goes on, and gradients beyond float32's
range are flagged data."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_cli import RUN, run

from rnnjax import load_summaries, load_sweep, provenance, results
from rnnjax.config import register_configs, sweep_dir_override, sweep_name, validate
from rnnjax.job import finished_summary, run_or_resume
from rnnjax.results import job_status
from rnnjax.tasks import sha1_of

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


def compose_job(overrides):
    """(validated Config, resolved dict) as experiments/run.py hands them to the job."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose("config", overrides=overrides)
    return validate(raw), OmegaConf.to_container(raw, resolve=True, enum_to_str=True)


def resume(job, overrides):
    cfg, resolved = compose_job(overrides)
    return run_or_resume(cfg, job, resolved)


TINY = ["seq_len=3", "hidden_size=4", "batch_size=2", "seeds=2"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One finished TINY job, run once per module; tests work on copies (`finished_job`)."""
    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped isolation is not active yet
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.delenv("RNNJAX_DATA", raising=False)
        assert resume(root / "job", TINY)["status"] == "ok"
    return root / "job"


@pytest.fixture
def finished_job(tmp_path, template):
    job = tmp_path / "job"
    shutil.copytree(template, job)
    assert job_status(job) == "ok"
    return job


def test_changed_config_or_resume_false_runs_again(finished_job, caplog):
    job = finished_job
    first = (job / "summary.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        assert resume(job, TINY)["status"] == "ok"
    assert "already holds a finished run" in caplog.text
    assert (job / "summary.json").read_bytes() == first
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        resume(job, [*TINY, "init.std=0.02"])
    assert "another config" in caplog.text
    assert json.loads((job / "summary.json").read_text())["config"]["init"]["std"] == 0.02
    second = (job / "summary.json").read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        resume(job, [*TINY, "init.std=0.02", "resume=false"])
    assert "already holds" not in caplog.text
    assert (job / "summary.json").read_bytes() != second  # run again (a new wall time)


def test_changed_code_version_runs_again(finished_job, monkeypatch, caplog):
    job = finished_job
    assert finished_summary(job, compose_job(TINY)[1]) is not None
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+src.000000000000")
    with caplog.at_level(logging.WARNING, logger="rnnjax"):
        assert finished_summary(job, compose_job(TINY)[1]) is None
    assert "another code version" in caplog.text
    summary = resume(job, TINY)
    assert summary["provenance"]["code_version"] == "0.1.0+src.000000000000"


def test_changed_data_runs_again(tmp_path, monkeypatch, caplog):
    """The same command with $RNNJAX_DATA pointing at another text, or the text edited in
    place, is not finished: the job runs again on the new text."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 5)) for _ in range(2600)]
    text = " ".join(words)  # 15599 characters: d2l's 10000 + 5000 windows and more
    texts = {}
    for name, tail in (("a", ""), ("b", " another ending")):
        (tmp_path / name).mkdir()
        texts[name] = tmp_path / name / "timemachine.txt"
        # b differs beyond the windows the job uses: the same compiled programs, other data
        texts[name].write_text(text + tail)
    overrides = ["task=timemachine", *TINY]
    job = tmp_path / "job"
    monkeypatch.setenv("RNNJAX_DATA", str(tmp_path / "a"))
    first = resume(job, overrides)
    data = first["provenance"]["data"]
    assert data == {"path": str(texts["a"].resolve()), "sha1": sha1_of(texts["a"])}
    assert finished_summary(job, compose_job(overrides)[1]) is not None

    monkeypatch.setenv("RNNJAX_DATA", str(tmp_path / "b"))
    with caplog.at_level(logging.WARNING, logger="rnnjax"):
        assert finished_summary(job, compose_job(overrides)[1]) is None
    assert "on other data" in caplog.text
    second = resume(job, overrides)
    assert second["provenance"]["data"]["sha1"] == sha1_of(texts["b"]) != data["sha1"]
    assert finished_summary(job, compose_job(overrides)[1]) is not None

    texts["b"].write_text(texts["b"].read_text()[::-1])  # edited in place: same path, new bytes
    assert finished_summary(job, compose_job(overrides)[1]) is None


@pytest.mark.parametrize("content,problem", [
    ("[]", "holds list, not an object"),
    ('"ok"', "holds str, not an object"),
    ("{not json", "not valid JSON"),
])
def test_a_summary_that_is_not_an_object_is_unfinished(finished_job, content, problem, caplog):
    job = finished_job
    (job / "summary.json").write_text(content)
    assert job_status(job) == "unfinished"
    with pytest.warns(UserWarning, match=re.escape(problem)):
        with pytest.raises(FileNotFoundError, match="no finished job"):
            load_sweep(job)
    with pytest.warns(UserWarning, match=re.escape(problem)):
        with pytest.raises(FileNotFoundError, match="no finished job"):
            load_summaries(job)
    with caplog.at_level(logging.WARNING, logger="rnnjax"):
        assert finished_summary(job, compose_job(TINY)[1]) is None
    assert problem in caplog.text
    if content == "[]":  # resume runs it again, without a traceback
        assert resume(job, TINY)["status"] == "ok" and job_status(job) == "ok"


def _edit_summary(job, edit):
    s = json.loads((job / "summary.json").read_text())
    edit(s)
    (job / "summary.json").write_text(json.dumps(s))


@pytest.mark.parametrize("edit,problem", [
    (lambda s: s.update(status="banana"), "status 'banana' is not one of"),
    (lambda s: s.update(headlines=[]), "exactly one of headline and headlines"),
    (lambda s: s.update(headlines=s.pop("headline")), "headlines is not a non-empty list"),
    (lambda s: s.pop("headline") and s.update(headlines=[]), "not a non-empty list"),
    (lambda s: s.pop("config"), "no config"),
    (lambda s: s.pop("files"), "file list"),
    (lambda s: s.pop("provenance"), "code_version"),
    (lambda s: s.update(T="36"), "no T"),
    (lambda s: s["files"].update({"../x": s["files"]["batch.npz"]}), "'../x'"),
])
def test_a_summary_that_does_not_validate_is_unfinished_everywhere(tmp_path, finished_job, edit,
                                                                  problem):
    """Loaders and resume read summary.json through the one schema: a summary that does not
    validate is unfinished for both (loaders warn and skip it, resume runs it again)."""
    job = finished_job
    other = tmp_path / "other"
    shutil.copytree(job, other)
    _edit_summary(job, edit)
    assert results.read_job(job).status == "unfinished"
    assert problem in results.read_job(job).problem
    with pytest.warns(UserWarning, match=re.escape(problem)):
        df = load_sweep(tmp_path)
    assert set(df.job) == {"other"}
    with pytest.warns(UserWarning, match="skipped 1 unfinished"):
        assert list(load_summaries(tmp_path).job) == ["other"]
    assert finished_summary(job, compose_job(TINY)[1]) is None  # resume runs it again


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_result_files_that_do_not_match_their_summary_are_unfinished(tmp_path, finished_job,
                                                                    damage):
    job = finished_job
    shutil.copytree(job, tmp_path / "other")
    f = job / "grad_norms.parquet"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        f.unlink()
    assert job_status(job) == "unfinished"
    with pytest.warns(UserWarning, match="grad_norms.parquet"):
        df = load_sweep(tmp_path)  # the sweep loads; the damaged job is skipped
    assert set(df.job) == {"other"}
    assert finished_summary(job, compose_job(TINY)[1]) is None
    if damage == "truncate":  # resume runs it again
        assert resume(job, TINY)["status"] == "ok" and job_status(job) == "ok"


def test_an_unreadable_job_never_fails_a_whole_load(tmp_path, finished_job):
    job = finished_job
    shutil.copytree(job, tmp_path / "other")
    f = job / "grad_norms.parquet"
    f.write_bytes(b"not a parquet file")  # listed with its new size and sha1: it validates
    _edit_summary(job, lambda s: s["files"].update({f.name: results.file_record(f)}))
    assert job_status(job) == "ok"
    with pytest.warns(UserWarning, match="skipped 1 unreadable job: job"):
        df = load_sweep(tmp_path)
    assert set(df.job) == {"other"}


def test_stale_temporary_files_are_removed_when_the_job_runs_again(finished_job):
    job = finished_job
    stale = [job / ".grad_norms.parquet.k1ll3d.tmp", job / ".summary.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (job / "summary.json").unlink()  # killed before its summary
    (job / "keep.tmp").write_text("not ours")  # not a hidden temporary of the writer
    resume(job, TINY)
    assert not any(p.exists() for p in stale) and (job / "keep.tmp").exists()
    assert job_status(job) == "ok"


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
    # The plant first, then what the tests import (this checkout, when PYTHONPATH names it).
    code = [p for p in [os.environ.get("PYTHONPATH")] if p]
    env.update(JAX_COMPILATION_CACHE_DIR=jax_cache,
               PYTHONPATH=os.pathsep.join([str(plant), *code]))
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
    env["PYTHONPATH"] = os.pathsep.join(code)
    p = subprocess.run(RUN + ["-m", f"hydra.sweep.dir={sweep}", "seq_len=3,4,5"] + SMALL,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "3 jobs: 3 ok (2 skipped: finished earlier)" in p.stderr

    # A single run that fails exits 1 with one line.
    env["PYTHONPATH"] = os.pathsep.join([str(plant), *code])
    p = subprocess.run(RUN + [f"hydra.run.dir={tmp_path / 'one'}", "seq_len=4"] + SMALL,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "rnnjax: error: the job failed: FloatingPointError: planted failure")


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
