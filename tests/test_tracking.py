"""A finished result is never lost to a tracker or a file system: the tracker is not part of a
job's identity (a finished job is skipped and sent to a newly named tracker without
recomputing, the same events as a fresh run sends), a tracker's failure at start or mid-job is
one line, recorded, and costs the job nothing, and a directory that cannot be written is one
line before anything runs. In-process, through the command line (`app`)."""

import errno
import io
import json
import logging
import socket
import tempfile
from pathlib import Path

import hydra.core.utils
import pandas as pd
import pytest
from helpers import TINY

import rnnjax.app.job
from rnnjax import load_summaries, load_sweep
from rnnjax.app.results import job_status
from rnnjax.app.trackers import CsvTracker
from rnnjax.sweeps.app import RUN_ROOT, SWEEP_ROOT, job_name, sweep_name

TRAIN = [*TINY, "train.steps=4", "train.log_every=2", "train.lr=0.1"]
CSV_FILES = ("config.json", "headline.csv", "profile.csv", "metrics.csv")


def summary_of(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.e2e
def test_a_failing_tracker_on_a_finished_job_keeps_its_results(app, tmp_path):
    """The issue's case: a finished job re-run with a tracker that fails at start was run
    again in its directory and left `failed`, its results no longer loadable."""
    job = tmp_path / RUN_ROOT / job_name(TINY)
    assert app(*TINY).code == 0
    tables = (job / "grad_norms.parquet").read_bytes()
    r = app(*TINY, "logger=mlflow", "logger.uri=bogus://x")
    assert r.code == 1 and "Traceback" not in r.err
    assert "skipped: " in r.err and "already holds a finished run" in r.err
    line = last_line(r.err)
    assert line.startswith("rnnjax: error: logger=mlflow (bogus://x) failed: ")
    assert line.endswith(f"the job's results are intact in {job}")
    assert (job / "grad_norms.parquet").read_bytes() == tables  # not recomputed
    assert job_status(job) == "ok" and len(load_sweep(job)) == 2 * 3
    (record,) = summary_of(job)["trackers"]
    assert record["logger"] == "mlflow" and record["status"] == "failed"
    assert record["location"] == "bogus://x" and "bogus://x" in record["error"]


@pytest.mark.e2e
def test_a_finished_job_is_sent_to_a_new_tracker_as_a_fresh_run_sends(app, tmp_path):
    fresh, later = tmp_path / "fresh", tmp_path / "later"
    assert app(*TRAIN, "logger=csv", f"hydra.run.dir={fresh}").code == 0
    assert app(*TRAIN, f"hydra.run.dir={later}").code == 0
    before = {p.name: p.read_bytes() for p in later.iterdir() if p.suffix in (".parquet",
                                                                              ".npz")}
    r = app(*TRAIN, "logger=csv", f"hydra.run.dir={later}")
    assert r.code == 0 and "skipped: " in r.err
    assert f"logger=csv: sent {later} to {later / 'csv'}" in r.err
    assert {n: (later / n).read_bytes() for n in before} == before  # nothing recomputed
    for name in CSV_FILES:  # config, headline, profiles and metrics: the same events
        assert (later / "csv" / name).read_bytes() == (fresh / "csv" / name).read_bytes(), name
    metrics = pd.read_csv(later / "csv" / "metrics.csv")
    assert metrics.step.tolist() == [2, 4] and (metrics.alive_fraction == 1.0).all()
    profile = pd.read_csv(later / "csv" / "profile.csv")
    assert sorted(profile.train_step.unique()) == [0, 2, 4]
    # Sent once: the same tracker again sends nothing more.
    r = app(*TRAIN, "logger=csv", f"hydra.run.dir={later}")
    assert r.code == 0 and "was sent there already" in r.err
    assert [t["status"] for t in summary_of(later)["trackers"]] == ["ok"]


@pytest.mark.e2e
def test_a_tracker_failing_mid_job_costs_the_job_nothing(app, tmp_path, monkeypatch):
    def full_disk(self, step, metrics):
        raise OSError(errno.ENOSPC, "No space left on device", str(self._dir / "metrics.csv"))

    monkeypatch.setattr(CsvTracker, "log_metrics", full_disk)
    job = tmp_path / "job"
    r = app(*TRAIN, "logger=csv", f"hydra.run.dir={job}")
    assert r.code == 1 and "Traceback" not in r.err
    assert last_line(r.err) == (
        f"rnnjax: error: logger=csv ({job / 'csv'}) failed: OSError: [Errno 28] No space left "
        f"on device: '{job / 'csv' / 'metrics.csv'}'; the job's results are intact in {job}")
    assert job_status(job) == "ok" and len(load_sweep(job)) == 3 * 2 * 3
    summary = summary_of(job)
    assert summary["trackers"][0]["status"] == "failed" and "training" in summary


def test_an_unreachable_tracking_server_fails_before_any_compute(app, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the old code: fail fast too
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = app(*TINY, "logger=mlflow", f"logger.uri=http://127.0.0.1:{port}")
    assert r.code == 2 and r.err.splitlines() == [
        f"rnnjax: error: logger.uri=http://127.0.0.1:{port}: cannot reach the tracking server "
        "(Connection refused); start it, or set another logger.uri"]
    assert not (tmp_path / "results").exists()


@pytest.mark.e2e
def test_a_sweep_sends_its_finished_jobs_and_goes_on_past_a_failing_tracker(
        app, tmp_path):
    grid = ["seed=0,1", *TINY]
    sweep = Path(SWEEP_ROOT) / sweep_name(grid)
    assert app("-m", *grid).code == 0
    jobs = sorted(p.parent for p in (tmp_path / sweep).rglob("summary.json"))
    assert [j["dir"] for j in json.loads((tmp_path / sweep / "sweep.json").read_text())[
        "jobs"]] == [job_name([f"seed={s}", *TINY]) for s in (0, 1)]
    r = app("-m", *grid, "logger=csv")
    assert r.code == 0 and r.closing() == (
        f"rnnjax: sweep {sweep}: 2 jobs: 2 ok (2 skipped: finished earlier)")
    assert all((j / "csv" / "headline.csv").is_file() for j in jobs)
    # A tracker that cannot start (its folder is a file): every job's results stay.
    (tmp_path / "afile").write_text("")
    r = app("-m", *grid, "logger=tensorboard", f"logger.dir={tmp_path / 'afile'}")
    assert r.code == 1 and "Traceback" not in r.err
    assert r.closing().startswith(f"rnnjax: sweep {sweep}: 2 jobs: 2 ok (2 skipped: finished "
                                  "earlier); tracker failed: seed=0 ")
    assert r.closing().count("logger=tensorboard (") == 2
    assert len(load_summaries(tmp_path / sweep)) == 2


def test_a_job_name_with_a_path_is_refused(app, tmp_path):
    r = app(*TINY, "hydra.job.name=../../../escaped_log")
    assert r.code == 2 and r.err.splitlines() == [
        "rnnjax: error: hydra.job.name=../../../escaped_log is invalid: it names the job's log "
        "file (../../../escaped_log.log in the job's directory); allowed: a name without '/', "
        "'\\' or '..'"]
    assert not list(tmp_path.parent.rglob("escaped_log.log"))
    r = app("-m", "seed=0,1", *TINY, "hydra.job.name=a/b")
    assert r.code == 2 and len(r.err.splitlines()) == 1 and "hydra.job.name=a/b" in r.err


def test_a_run_directory_that_cannot_be_written_is_one_line(app, tmp_path,
                                                            monkeypatch):
    folder = tmp_path / "readonly"  # as root a chmod would not stop writes: refused here
    folder.mkdir()
    run = folder / "run"
    temporary = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return temporary(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    r = app(*TINY, f"hydra.run.dir={run}")
    assert r.code == 2 and r.err.splitlines() == [
        f"rnnjax: error: hydra.run.dir={run}: cannot write in {folder} (Permission denied)"]
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary)

    def full(cfg, filename, output_dir):  # Hydra writing .hydra/config.yaml on a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir / filename))

    monkeypatch.setattr(hydra.core.utils, "_save_config", full)
    r = app(*TINY, f"hydra.run.dir={tmp_path / 'full'}")
    assert r.code == 2 and r.err.splitlines() == [
        f"rnnjax: error: cannot write {tmp_path / 'full' / '.hydra' / 'config.yaml'}: No space "
        "left on device"]


def test_a_finished_job_in_a_read_only_directory_is_skipped(app, tmp_path,
                                                            monkeypatch):
    job = tmp_path / "job"
    assert app(*TINY, f"hydra.run.dir={job}").code == 0
    handler = logging.FileHandler.__init__

    def read_only(self, filename, *args, **kwargs):  # Hydra's run.log cannot be opened
        if Path(filename).parent == job:
            raise PermissionError(errno.EACCES, "Permission denied", str(filename))
        return handler(self, filename, *args, **kwargs)

    monkeypatch.setattr(logging.FileHandler, "__init__", read_only)
    r = app(*TINY, f"hydra.run.dir={job}")
    assert r.code == 0 and "Traceback" not in r.err and "skipped: " in r.err
    assert f"rnnjax: run {job}: ok" in r.err


@pytest.mark.e2e
def test_why_a_run_runs_again_is_said_once(app, tmp_path):
    job = tmp_path / "job"
    assert app(*TINY, f"hydra.run.dir={job}").code == 0
    r = app(*TINY, "init.std=0.02", f"hydra.run.dir={job}")
    assert r.code == 0 and (r.out + r.err).count("holds a finished run of another config") == 1


def test_a_single_run_says_where_its_results_are(app, tmp_path):
    job = tmp_path / RUN_ROOT / job_name(TINY)
    r = app(*TINY)
    assert r.code == 0 and r.err.splitlines()[-3:] == [
        f"rnnjax: run {job}: ok", f"rnnjax: report: rnnjax report {job}",
        f'rnnjax: in Python: rnnjax.load_sweep("{job}")']


@pytest.mark.e2e
def test_a_diverged_training_run_says_the_same_everywhere(app, tmp_path):
    job = tmp_path / "job"
    assert app(*TRAIN[:-1], "train.lr=1e12", f"hydra.run.dir={job}").code == 0
    training = summary_of(job)["training"]
    metrics = pd.read_parquet(job / "metrics.parquet")
    last = metrics[metrics.train_step == 4]
    assert (last.train_ppl == float("inf")).all()  # exp of a loss near 1e12
    assert training["final_train_ppl"] == "inf"  # summary.json's inf
    assert load_summaries(job)["training.final_train_ppl"].tolist() == [float("inf")]
    step = next(ln for ln in (job / "run.log").read_text().splitlines() if "step 4 of 4" in ln)
    assert "(ppl inf)" in step and "nan" not in step


@pytest.mark.e2e
def test_run_log_holds_the_training_lines_under_a_terminal(app, tmp_path,
                                                           monkeypatch):
    tqdm = rnnjax.app.training.tqdm

    def shown(*args, **kwargs):  # the bar a terminal shows (disable=None would hide it)
        return tqdm(*args, **{**kwargs, "disable": False, "file": io.StringIO()})

    monkeypatch.setattr(rnnjax.app.training, "tqdm", shown)
    job = tmp_path / "job"
    r = app(*TRAIN, f"hydra.run.dir={job}")
    assert r.code == 0
    log = (job / "run.log").read_text()
    assert "step 2 of 4: " in log and "step 4 of 4: " in log
    assert "step 2 of 4: " not in r.out  # the bar shows it on the console
