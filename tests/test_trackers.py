"""Experiment trackers: each backend's files are read back with the tracker's own reader
(TensorBoard's EventAccumulator, MlflowClient on the sqlite store, wandb's `leet inspect` on
the offline run, pandas on the CSV files) and compared value by value with what was logged."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from rnnjax.app import trackers
from rnnjax.app.config import LoggerName, register_configs
from rnnjax.app.trackers import (
    OPTIONS,
    TRACKERS,
    Tracker,
    TrackerError,
    check_options,
    headline_numbers,
    make_tracker,
    median_profile,
)
from rnnjax.app.validate import validate

ROOT = Path(__file__).resolve().parents[1]
RUN = "activation=tanh,seq_len=8"

CONFIG = {
    "activation": {"name": "tanh"},
    "init": {"name": "orthogonal", "std": None, "gain": 1.5, "radius": None},
    "train": {"lr": 0.1, "clip": None, "steps": 20},
    "seq_len": 8,
}
HEADLINE = {
    "log10_slope_per_step_back": -0.9453,
    "theory/mean_field/log10_factor_per_step": -0.9461,
    "theory/pascanu_log10_bound_per_step": math.nan,
    "n_overflow": 3.0,
}
STEPS_BACK = np.arange(8)
# At initialization: 10**(-0.5 k); after 10 steps: an overflow (inf) and an underflow (0).
PROFILES = {0: 10.0 ** (-0.5 * STEPS_BACK),
            10: np.array([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0, math.inf, math.inf])}
METRICS = {10: {"train_loss": 1.25, "val_loss": 1.5}, 20: {"train_loss": 1.0, "val_loss": 1.375}}


def log_all(tracker: Tracker) -> None:
    """What a training job logs, in the job's order."""
    tracker.log_config(CONFIG)
    tracker.log_profile(0, STEPS_BACK, PROFILES[0])
    for step in (10, 20):
        tracker.log_metrics(step, METRICS[step])
        if step in PROFILES:
            tracker.log_profile(step, STEPS_BACK, PROFILES[step])
    tracker.log_headline(HEADLINE)


def close_or_nan(a, b, rtol=1e-6):
    """Equal to rtol, NaN matching NaN and inf matching inf."""
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=0,
                       equal_nan=True)


# ---- the interface ---------------------------------------------------------------------------

def test_unknown_tracker_is_one_clear_line(tmp_path):
    with pytest.raises(TrackerError) as e:
        make_tracker("neptune", tmp_path, RUN)
    assert str(e.value) == ("logger=neptune is invalid: allowed: none, tensorboard, wandb, "
                            "mlflow, csv")
    assert not any(tmp_path.iterdir())


def test_option_a_tracker_does_not_take_is_an_error(tmp_path):
    with pytest.raises(TrackerError, match=r"logger.project is not an option of "
                                           r"logger=tensorboard \(it takes logger.dir\)"):
        make_tracker("tensorboard", tmp_path, RUN, {"project": "x"})
    with pytest.raises(TrackerError, match="logger.dir is not an option of logger=none"):
        check_options("none", {"dir": "x"})
    with pytest.raises(TrackerError, match="logger.uri and logger.dir are both set"):
        check_options("mlflow", {"dir": "x", "uri": "sqlite:///y.db"})
    check_options("wandb", {"name": "wandb", "dir": None, "project": "p", "mode": "offline"})
    assert not any(tmp_path.iterdir())


def test_missing_package_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.PACKAGES, "wandb", ("wandb_not_installed_here",))
    with pytest.raises(TrackerError) as e:
        make_tracker("wandb", tmp_path, RUN)
    assert str(e.value) == ("logger=wandb needs the package 'wandb_not_installed_here': pip "
                            "install 'rnnjax[wandb]'")
    assert not any(tmp_path.iterdir())


def test_names_agree_across_schema_tracker_and_conf(tmp_path):
    """Every option of the group is a tracker, and each option file composes, validates and
    sets only the keys its tracker takes."""
    files = sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml"))
    assert sorted(TRACKERS) == files == sorted(e.value for e in LoggerName)
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert validate(compose(config_name="config")).logger.name.value == "none"
        for name in TRACKERS:
            logger = validate(compose(config_name="config",
                                      overrides=[f"logger={name}"])).logger
            assert logger.name.value == name
            check_options(name, vars(logger))
            assert set(OPTIONS[name]) <= {"dir", "project", "mode", "uri"}
    assert type(make_tracker(LoggerName.none, tmp_path, RUN, {"name": LoggerName.none})) is Tracker


def test_importing_trackers_imports_no_tracker_package(tmp_path):
    """`import rnnjax.app.trackers` and the `none` tracker import none of the trackers' packages."""
    code = (
        "import sys, numpy as np\n"
        "import rnnjax.app.trackers as t\n"
        "with t.make_tracker('none', sys.argv[1], 'r') as tr:\n"
        "    tr.log_config({'a': 1}); tr.log_headline({'x': 1.0})\n"
        "    tr.log_profile(0, np.arange(3), np.ones(3)); tr.log_metrics(1, {'loss': 1.0})\n"
        "heavy = {'tensorboard', 'tensorboardX', 'wandb', 'mlflow', 'sqlalchemy'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
    assert not any(tmp_path.iterdir())  # `none` writes nothing


def test_median_profile_and_headline_numbers():
    g = np.array([[1.0, 2.0, 4.0], [3.0, np.nan, 8.0], [5.0, 6.0, np.inf]])  # (S=3, T=3)
    k, med = median_profile(g)
    # steps back 0, 1, 2 are t = T, T-1, T-2; NaN is left out, inf kept
    assert k.tolist() == [0, 1, 2]
    assert med.tolist() == [8.0, 4.0, 3.0]
    h = {"slope": -1.0, "theory": {"mf": {"log10": -0.9, "gain": 1}, "ok": True},
         "per_seed": [1.0, 2.0], "note": "x", "none": None}
    assert headline_numbers(h) == {"slope": -1.0, "theory/mf/log10": -0.9,
                                   "theory/mf/gain": 1.0, "theory/ok": 1.0}


def test_profile_shapes_are_checked(tmp_path):
    with make_tracker("csv", tmp_path, RUN) as tr:
        with pytest.raises(ValueError, match="shape"):
            tr.log_profile(0, np.arange(3), np.ones(4))
        with pytest.raises(ValueError, match="integer"):
            tr.log_profile(0, np.arange(3.0), np.ones(3))


# ---- CSV (pandas) -----------------------------------------------------------------------------

def test_csv_read_back_with_pandas(tmp_path):
    with make_tracker("csv", tmp_path, RUN) as tr:
        log_all(tr)
        tr.log_metrics(30, {"train_loss": 0.5, "clip_fraction": 0.25})  # a new column
        tr.log_metrics(40, {"val_loss": 1.0, "train_loss": 0.25})  # fewer, in another order
    d = tmp_path / "csv"
    assert tr.location == str(d)
    assert json.loads((d / "config.json").read_text()) == CONFIG
    head = pd.read_csv(d / "headline.csv")
    assert len(head) == 1 and close_or_nan(head.loc[0, list(HEADLINE)], list(HEADLINE.values()))
    prof = pd.read_csv(d / "profile.csv")
    assert list(prof.columns) == ["train_step", "steps_back", "t", "name", "value"]
    assert (prof.t == 8 - prof.steps_back).all()  # as in the tables: t = T - steps back
    for step, values in PROFILES.items():
        p = prof[prof.train_step == step].sort_values("steps_back")
        assert p.steps_back.tolist() == STEPS_BACK.tolist() and set(p.name) == {"grad_norm"}
        assert close_or_nan(p.value, values, rtol=0)
    m = pd.read_csv(d / "metrics.csv").set_index("step")
    assert m.loc[20, "val_loss"] == 1.375 and m.loc[10, "train_loss"] == 1.25
    assert m.loc[30, "clip_fraction"] == 0.25 and math.isnan(m.loc[30, "val_loss"])
    assert math.isnan(m.loc[10, "clip_fraction"])
    assert m.loc[40, "train_loss"] == 0.25 and m.loc[40, "val_loss"] == 1.0
    assert math.isnan(m.loc[40, "clip_fraction"])


def test_csv_keeps_counts_integers_and_flags_booleans(tmp_path):
    headline = headline_numbers({"n_underflow": 382, "finite": True, "slope": -0.5,
                                 "theory": {"bound": "inf"}, "gone": None})
    assert headline == {"n_underflow": 382, "finite": True, "slope": -0.5,
                        "theory/bound": math.inf}
    with make_tracker("csv", tmp_path, RUN) as tr:
        tr.log_headline(headline)
    text = (tmp_path / "csv" / "headline.csv").read_text()
    assert text.splitlines()[1] == "382,True,-0.5,inf"  # not 382.0 and 1.0
    head = pd.read_csv(tmp_path / "csv" / "headline.csv")
    assert head.n_underflow.dtype == np.int64 and head.finite.dtype == bool


def test_file_trackers_never_write_into_another_runs_folder(tmp_path):
    """Under the job's directory a re-run replaces its own files; under logger.dir every run
    gets a folder of its own, named by the run (made safe for a path)."""
    job = tmp_path / "job"
    with make_tracker("csv", job, RUN) as tr:
        tr.log_metrics(1, {"loss": 2.0})
    with make_tracker("csv", job, RUN) as tr:
        tr.log_metrics(1, {"loss": 1.0})
    assert pd.read_csv(job / "csv" / "metrics.csv").loss.tolist() == [1.0]

    shared = tmp_path / "shared"
    for loss in (2.0, 1.0):
        with make_tracker("csv", job, "task.path=/a/b", {"dir": str(shared)}) as tr:
            tr.log_metrics(1, {"loss": loss})
    assert sorted(p.name for p in shared.iterdir()) == ["task.path=_a_b", "task.path=_a_b-2"]
    assert pd.read_csv(shared / "task.path=_a_b" / "metrics.csv").loss.tolist() == [2.0]
    assert pd.read_csv(shared / "task.path=_a_b-2" / "metrics.csv").loss.tolist() == [1.0]


# ---- TensorBoard (its event-file reader) --------------------------------------------------

def test_tensorboard_read_back_with_event_accumulator(tmp_path):
    pytest.importorskip("tensorboardX", reason="logger=tensorboard needs tensorboardX")
    pytest.importorskip("tensorboard", reason="TensorBoard's reader needs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    with make_tracker("tensorboard", tmp_path, RUN) as tr:
        log_all(tr)
    assert tr.location == str(tmp_path / "tensorboard")
    acc = EventAccumulator(tr.location, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()

    def series(tag):
        events = acc.Scalars(tag)
        return [e.step for e in events], [e.value for e in events]

    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == CONFIG
    for key, value in HEADLINE.items():
        assert series(f"headline/{key}") == ([0], pytest.approx([value], nan_ok=True))
    for step, values in PROFILES.items():  # float32 in the event file
        k, v = series(f"profile/grad_norm/train_step_{step}")
        assert k == STEPS_BACK.tolist() and close_or_nan(v, values)
    assert series("val_loss") == ([10, 20], [1.5, 1.375])
    assert series("train_loss") == ([10, 20], [1.25, 1.0])

    # the HParams dashboard: the flat config, with the headline tags as its metrics
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["train.lr"].number_value == pytest.approx(0.1)
    assert start["activation.name"].string_value == "tanh"
    assert start["train.clip"].string_value == "null"
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {f"headline/{k}" for k in HEADLINE}


# ---- MLflow (MlflowClient on the sqlite store) -----------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
@pytest.mark.e2e
def test_mlflow_read_back_with_client(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="logger=mlflow needs mlflow (or mlflow-skinny)")
    pytest.importorskip("sqlalchemy", reason="MLflow's sqlite store needs sqlalchemy")
    pytest.importorskip("alembic", reason="MLflow's sqlite store needs alembic")
    from mlflow import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the working directory (./mlruns, ...)
    job = tmp_path / "job"
    with make_tracker("mlflow", job, RUN, {"project": "grad"}, group="sweep1") as tr:
        log_all(tr)
    uri = f"sqlite:///{job.resolve() / 'mlflow.db'}"
    assert tr.location == uri and not any(cwd.iterdir())

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("grad")
    assert exp.artifact_location == (job.resolve() / "mlartifacts").as_uri()
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    assert run.data.tags["sweep"] == "sweep1"
    assert run.data.params == {"activation.name": "tanh", "init.name": "orthogonal",
                               "init.std": "null", "init.gain": "1.5", "init.radius": "null",
                               "train.lr": "0.1", "train.clip": "null", "train.steps": "20",
                               "seq_len": "8"}

    def history(key):
        h = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        return [m.step for m in h], [m.value for m in h]

    for key, value in HEADLINE.items():
        assert close_or_nan(run.data.metrics[f"headline/{key}"], value, rtol=0)
        assert history(f"headline/{key}")[0] == [0]

    for step, values in PROFILES.items():
        k, v = history(f"profile/grad_norm/train_step_{step}")
        # MLflow stores +inf as the largest float
        assert k == STEPS_BACK.tolist()
        assert close_or_nan(v, np.where(np.isinf(values), sys.float_info.max, values), rtol=0)
    assert history("val_loss") == ([10, 20], [1.5, 1.375])

    # a second job pointed at the same store: one more run there, marked failed on an error
    with pytest.raises(RuntimeError), make_tracker("mlflow", tmp_path / "job2", "b",
                                                   {"dir": str(job), "project": "grad"}):
        raise RuntimeError("the job failed")
    runs = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert runs == {RUN: "FINISHED", "b": "FAILED"}
    assert not (tmp_path / "job2").exists()


# ---- wandb (an offline run, read by wandb's own `leet inspect`) ------------------------------

@pytest.mark.e2e
@pytest.mark.slow
def test_wandb_offline_run_read_back_with_wandb_inspect(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="logger=wandb needs wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # not the user's
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    job = tmp_path / "job"
    with make_tracker("wandb", job, RUN, {"project": "grad"}, group="sweep1") as tr:
        log_all(tr)
    run_dir = Path(tr.location)
    assert run_dir.parent == job / "wandb" and run_dir.name.startswith("offline-run-")

    def inspect(*args):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *args,
                              str(run_dir)], capture_output=True, text=True, check=True)
        return out.stdout

    summary = json.loads(inspect("--summary", "--json"))
    assert summary["state"] == "finished" and summary["name"] == RUN
    assert summary["project"] == "grad"
    assert summary["config"] == CONFIG
    s = summary["summary"]
    assert s["headline/log10_slope_per_step_back"] == -0.9453
    assert s["headline/n_overflow"] == 3.0
    # wandb writes NaN in a run's summary as null
    assert s.get("headline/theory/pascanu_log10_bound_per_step") is None

    records = [json.loads(line) for line in inspect("--json").splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    metrics = {h["train_step"]: h for h in history if "val_loss" in h}
    assert {k: (h["train_loss"], h["val_loss"]) for k, h in metrics.items()} == {
        10: (1.25, 1.5), 20: (1.0, 1.375)}
    tables = {h["train_step"]: h["profile/grad_norm_table.path"] for h in history
              if "profile/grad_norm_table.path" in h}
    assert sorted(tables) == sorted(PROFILES)
    for step, path in tables.items():  # the table files of the run, in wandb's format
        table = json.loads((run_dir / "files" / path).read_text())
        assert table["columns"] == ["steps_back", "grad_norm"]
        k, v = zip(*table["data"], strict=True)
        assert list(k) == STEPS_BACK.tolist() and close_or_nan(v, PROFILES[step], rtol=0)


def test_folder_names_keep_safe_characters_and_are_bounded():
    """A run's folder name under logger.dir (rnnjax.app.names.folder_name): unsafe characters
    become `_`, dots at either end go, nothing left is `run`, and a name over 120 characters is
    cut with 12 hex digits of the sha1 of the run name, as a sweep's directory names are."""
    import hashlib

    from rnnjax.app.names import NAME_MAX, folder_name, safe_name

    assert folder_name("task.path=/a/b c") == "task.path=_a_b_c"
    assert folder_name("..x..") == "x" and folder_name("") == "run" and folder_name("..") == "run"
    long = "seq_len=1," * 20
    digest = hashlib.sha1(long.encode()).hexdigest()[:12]
    assert folder_name(long) == f"{long[:NAME_MAX - 13]}-{digest}"
    assert len(folder_name(long)) == NAME_MAX == len(safe_name(long, long))
    assert safe_name(long, long) == folder_name(long)  # the same bound and hash
