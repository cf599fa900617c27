"""rnnjax's Optuna sweeper (`hydra/sweeper=rnnjax_optuna`, rnnjax.sweeps.search), in-process:
its trials' jobs are named as the grid sweeper names them, the same command resumes (finished
jobs are skipped, not launched), the search ends with the closing line and Optuna's best trial,
and bad input is one line. Tests that run Optuna skip where the `optuna` extra is absent.

The search's jobs skip JAX (`fake_jobs`: each writes a finished run whose slope is
log10(init.gain), as a tanh network's crosses 0 near g = 1); whether a run is finished, and
resuming, are rnnjax's own (`rnnjax.app.job.run_or_resume`, `finished_summary`)."""

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
from helpers import TINY
from hydra.core.plugins import Plugins

import rnnjax.app.job
import rnnjax.sweeps.app
from rnnjax.app import provenance
from rnnjax.app.results import json_safe, write_json
from rnnjax.sweeps.app import SWEEP_ROOT, job_name, sweep_name
from rnnjax.sweeps.search import parse_objectives, score

# Optuna 2.10 imports its database storage with SQLAlchemy 2's deprecated declarative_base
pytestmark = pytest.mark.filterwarnings("ignore:.*declarative_base:DeprecationWarning")

SEARCH = ["hydra/sweeper=rnnjax_optuna", "hydra.sweeper.n_trials=3", "init=gaussian",
          "init.gain=interval(0.5,2.0)", *TINY]


@pytest.fixture
def optuna_sweeper():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="needs hydra-optuna-sweeper: pip install 'rnnjax[optuna]'")


@pytest.fixture
def fake_jobs(monkeypatch):
    """Jobs that write a finished run (a valid summary.json and its grad_norms.parquet) with
    the slope log10(init.gain), without JAX."""

    def run_job(cfg, out, resolved=None):
        data = b"grad norms"
        (Path(out) / "grad_norms.parquet").write_bytes(data)
        summary = {"status": "ok", "wall_time_s": 0.0, "T": cfg.seq_len,
                   "headline": {"log10_slope_per_step_back": math.log10(cfg.init.gain)},
                   "config": json_safe(resolved),
                   "provenance": {"code_version": provenance.code_version(), "data": None},
                   "files": {"grad_norms.parquet": {"bytes": len(data),
                                                    "sha1": hashlib.sha1(data).hexdigest()}}}
        write_json(summary, Path(out) / "summary.json")
        return summary

    monkeypatch.setattr(rnnjax.app.job, "run_job", run_job)


@pytest.fixture
def launched(monkeypatch):
    """The jobs the basic launcher launched (their task overrides)."""
    jobs = []
    launcher = Plugins.instance().class_name_to_class[
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher"]
    launch = launcher.launch

    def spy(self, job_overrides, initial_job_idx):
        jobs.extend([o for o in job if not o.startswith("hydra.")] for job in job_overrides)
        return launch(self, job_overrides, initial_job_idx)

    monkeypatch.setattr(launcher, "launch", spy)
    return jobs


def test_search_names_jobs_like_the_grid_sweeper_resumes_and_closes(app, tmp_path,
                                                                     optuna_sweeper, fake_jobs,
                                                                     launched):
    r = app("-m", *SEARCH)
    assert r.code == 0, r.err
    sweep = Path(SWEEP_ROOT) / sweep_name(SEARCH)
    manifest = json.loads((tmp_path / sweep / "sweep.json").read_text())["jobs"]
    assert [j["number"] for j in manifest] == [1, 2, 3]
    gains = []
    for job, overrides in zip(manifest, launched, strict=True):
        # the grid sweeper's name for a job of these overrides, in the command's sweep directory
        assert job["dir"] == job_name(overrides) == job_name(job["overrides"])
        assert sorted(job["overrides"]) == sorted(overrides)
        (gain,) = [float(o.split("=")[1]) for o in overrides if o.startswith("init.gain=")]
        assert 0.5 <= gain <= 2.0
        assert set(overrides) - {f"init.gain={gain!r}"} == {"init=gaussian", *TINY}
        gains.append(gain)
        assert (tmp_path / sweep / job["dir"] / "summary.json").is_file()
    assert len(set(gains)) == 3
    assert r.closing() == f"rnnjax: sweep {sweep}: 3 jobs: 3 ok"
    slopes = {json.loads((tmp_path / sweep / j["dir"] / "summary.json").read_text())
              ["headline"]["log10_slope_per_step_back"]: g
              for j, g in zip(manifest, gains, strict=True)}
    best = min(slopes, key=abs)
    assert r.err.splitlines()[-3] == (
        f"rnnjax: search: best of 3 trials: init.gain={slopes[best]} "
        f"(|headline.log10_slope_per_step_back| = {abs(best):.6g}); Optuna's results: "
        f"{sweep / 'optimization_results.yaml'}")
    assert r.err.splitlines()[-2:] == [f"rnnjax: report: rnnjax report {sweep}",
                                       f'rnnjax: in Python: rnnjax.load_sweep("{sweep}")']

    # The same command: the same trials, every job skipped without being launched.
    files = {p: p.read_bytes() for p in (tmp_path / sweep).rglob("*") if p.is_file()
             and p.name not in ("multirun.yaml", "sweep.json", "optimization_results.yaml")}
    launched.clear()
    again = app("-m", *SEARCH)
    assert again.code == 0, again.err
    assert launched == []
    assert again.closing() == f"rnnjax: sweep {sweep}: 3 jobs: 3 ok (3 skipped: finished earlier)"
    assert again.err.splitlines()[-3] == r.err.splitlines()[-3]
    assert json.loads((tmp_path / sweep / "sweep.json").read_text())["jobs"] == manifest
    for path, content in files.items():
        assert path.read_bytes() == content, path


@pytest.mark.parametrize("bad,message", [
    ("init.gain=interval(-1.0,2.0)",
     "rnnjax: error: init.gain=-1.0 is invalid: must be a number > 0, or a list of them "
     "([0.5,1.0]) vmapped in one job (at init.gain=-1.0, an end of the search space's "
     "init.gain=interval(-1.0,2.0))"),
    ("hydra.sweeper.objective=|headline.loss_mean",
     "rnnjax: error: hydra.sweeper.objective=|headline.loss_mean is invalid; allowed: KEY, "
     "|KEY| (its absolute value) or KEY^2 (its square), KEY a dotted key of a number in a "
     "job's summary.json, e.g. |headline.log10_slope_per_step_back|"),
])
def test_a_bad_search_gives_one_line_and_writes_nothing(app, tmp_path, optuna_sweeper, bad,
                                                        message):
    r = app("-m", *SEARCH, bad)
    assert r.code == 2
    assert r.err.strip().splitlines() == [message]
    assert not (tmp_path / "results").exists()


def test_the_sweeper_without_its_package_gives_one_line(capsys, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit) as e:
        rnnjax.sweeps.app.check_group_options(["-m", "hydra/sweeper=rnnjax_optuna"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "rnnjax: error: hydra/sweeper=rnnjax_optuna needs the package 'hydra-optuna-sweeper': "
        "pip install 'rnnjax[optuna]'\n")


def test_objectives_are_read_from_the_summary(capsys):
    summary = {"status": "ok", "headline": {"log10_slope_per_step_back": -0.25,
                                            "loss_mean": 3.0, "n_underflow": 0}}
    one = parse_objectives("|headline.log10_slope_per_step_back|", ["minimize"])
    assert score(one, summary, Path("job")) == 0.25
    assert score(parse_objectives("headline.log10_slope_per_step_back^2", ["minimize"]),
                 summary, Path("job")) == 0.0625
    two = parse_objectives(["headline.log10_slope_per_step_back", "headline.loss_mean"],
                           ["minimize", "maximize"])
    assert score(two, summary, Path("job")) == [-0.25, 3.0]
    # Not a finite number: a text, which Optuna's sweeper takes as a failed trial.
    nan = {**summary, "headline": {"log10_slope_per_step_back": math.nan}}
    assert score(one, nan, Path("job")) == "|headline.log10_slope_per_step_back| = nan"
    # A key the summary lacks, a malformed objective, a count unlike the directions: one line.
    for bad in (lambda: score(parse_objectives("headline.slope", ["minimize"]), summary,
                              Path("job")),
                lambda: parse_objectives("|headline.loss_mean|^2", ["minimize"]),
                lambda: parse_objectives("headline.loss_mean", ["minimize", "maximize"])):
        with pytest.raises(SystemExit) as e:
            bad()
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnjax: error: hydra.sweeper.objective") and err.count("\n") == 1
    assert score(parse_objectives("headline.slope", ["minimize"]), {"status": "nonfinite"},
                 Path("job")) == "headline.slope is not finite (status nonfinite)"
