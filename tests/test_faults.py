"""Resume and faults, in-process: a job whose config, code version or data changed runs
again; a summary or result file that does not validate makes its job unfinished everywhere
(loaders skip it, resume re-runs it); stale temporary files are removed. (Interrupted sweeps
and failing jobs: test_sweep.py; numbers beyond the dtype's range: test_job.py.)"""

import json
import logging
import re
import shutil

import numpy as np
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rnnjax import load_summaries, load_sweep
from rnnjax.app import provenance, results
from rnnjax.app.config import register_configs
from rnnjax.app.job import finished_summary, run_or_resume
from rnnjax.app.results import job_status
from rnnjax.app.validate import validate
from rnnjax.core.tasks import sha1_of

SMALL = ["hidden_size=4", "batch_size=2", "seeds=2"]



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


@pytest.mark.e2e
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


@pytest.mark.e2e
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
