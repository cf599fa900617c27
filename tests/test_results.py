import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from rnnjax.app.config import Config
from rnnjax.app.results import (
    config_columns,
    config_schema_columns,
    file_record,
    fit_window,
    load_summaries,
    load_sweep,
    log10_slope,
    probe_frame,
    summary_problem,
    with_config_dtypes,
    write_json,
    write_parquet,
)
from rnnjax.app.summary import Profile


def test_fit_window_is_middle_half():
    assert fit_window(100) == (26, 75)
    assert fit_window(100, first=61) == (71, 90)
    assert fit_window(4) == (2, 3)
    assert fit_window(1) == (1, 1) and fit_window(2) == (1, 2)


def test_slope_recovers_geometric_decay_and_skips_underflow():
    T = 60
    g = 0.8 ** (T - np.arange(1, T + 1))  # vanishing going back
    slope, window = log10_slope(g)
    assert slope == pytest.approx(math.log10(0.8), abs=1e-12) and window == (16, 45)
    g[:30] = 0.0  # underflowed steps are left out, not fitted as -inf
    slope, window = log10_slope(g)
    assert slope == pytest.approx(math.log10(0.8), abs=1e-12) and window == (38, 53)
    g[40] = np.inf
    assert log10_slope(g)[1] == (46, 56)  # usable from t = 42
    assert math.isnan(log10_slope(np.zeros(T))[0])
    assert math.isnan(log10_slope(np.array([1.0]))[0])


def profile(g, pg=None, overflow=None, forward_t=None):
    """A Profile of S x T norms (flags off unless given)."""
    g = np.asarray(g, np.float64)
    S, _ = g.shape
    return Profile(np.zeros(S), g, g if pg is None else pg,
                   np.zeros(g.shape, bool) if overflow is None else overflow,
                   np.zeros(S, np.int64) if forward_t is None else np.asarray(forward_t), {})


def test_probe_frame_schema():
    cols = config_columns(Config())
    df = probe_frame(np.array([3, 4]), profile(np.ones((2, 5)), 2 * np.ones((2, 5))), cols)
    assert list(df.seed) == [3] * 5 + [4] * 5 and list(df.t) == [1, 2, 3, 4, 5] * 2
    assert df.grad_norm.dtype == np.float64 and df.init_gain.dtype == np.float64
    assert (df.activation == "tanh").all() and (df.init == "normal").all()
    assert df.init_std.isna().all()  # Config() leaves std unset: the default applies


def test_tables_give_t_and_steps_back():
    df = probe_frame(np.array([3, 4]), profile(np.ones((2, 5))), config_columns(Config()))
    assert list(df.steps_back) == [4, 3, 2, 1, 0] * 2 and (df.steps_back == df["T"] - df.t).all()


def test_summaries_give_the_config_once_and_infinities_as_floats(tmp_path):
    df = probe_frame(np.array([0]), profile(np.ones((1, 3))), config_columns(Config()))
    write_parquet(df, tmp_path / "grad_norms.parquet")
    config = OmegaConf.to_container(OmegaConf.structured(Config), enum_to_str=True)
    training = {"final_val_ppl": math.inf, "final_val_loss": 745.0}
    write_json(finished_summary_of(tmp_path, config=config, training=training,
                                   trackers=[{"logger": "csv", "status": "ok"}]),
               tmp_path / "summary.json")
    row = load_summaries(tmp_path).iloc[0]
    assert not [c for c in row.index if c.startswith(("config.", "trackers"))]
    assert row["train_lr"] == 1.0 and row["activation"] == "tanh"  # as the tables name them
    assert row["training.final_val_ppl"] == math.inf  # written as "inf", read as a float
    assert row["training.final_val_loss"] == 745.0


def finished_summary_of(job, **extra):
    """A valid summary of a job directory holding a grad_norms.parquet (see summary_problem)."""
    return {"status": "ok", "wall_time_s": 1.0, "T": 3, "config": {},
            "provenance": {"code_version": "test"}, "headline": {"log10_slope_per_step_back": 0.0},
            "files": {"grad_norms.parquet": file_record(job / "grad_norms.parquet")}, **extra}


def test_load_sweep_skips_unfinished_jobs(tmp_path):
    df = probe_frame(np.array([0]), profile(np.ones((1, 3))), config_columns(Config()))
    for name in ("0", "1", "2", "3"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
    write_parquet(df, tmp_path / "0" / "grad_norms.parquet")
    write_json(finished_summary_of(tmp_path / "0"), tmp_path / "0" / "summary.json")
    write_parquet(df, tmp_path / "1" / "grad_norms.parquet")  # killed before its summary
    write_parquet(df, tmp_path / "3" / "grad_norms.parquet")
    write_json({"status": "ok"}, tmp_path / "3" / "summary.json")  # does not validate
    with pytest.warns(UserWarning, match="skipped 3 unfinished") as w:
        out = load_sweep(tmp_path)
    assert "3 (summary.json has no config)" in str(w[0].message)
    assert list(out.job.unique()) == ["0"] and len(out) == 3
    assert len(load_sweep(tmp_path / "0")) == 3  # a single run directory
    with pytest.raises(FileNotFoundError):
        load_sweep(tmp_path / "nope")


def test_summary_schema(tmp_path):
    df = probe_frame(np.array([0]), profile(np.ones((1, 3))), config_columns(Config()))
    write_parquet(df, tmp_path / "grad_norms.parquet")
    good = finished_summary_of(tmp_path)
    assert summary_problem(good, tmp_path) is None
    assert summary_problem({**good, "headline": {"log10_slope_per_step_back": None}},
                           tmp_path) is None  # NaN is written as null
    failed = {"status": "failed", "error": "E: x", "config": {}}
    assert summary_problem(failed, tmp_path) is None
    for bad, problem in [
        ([], "holds list"), ("ok", "holds str"), ({**good, "status": "banana"}, "'banana'"),
        ({**failed, "error": None}, "no error"), ({**good, "T": True}, "no T"),
        ({**good, "wall_time_s": "1"}, "wall_time_s"),
        ({**good, "headline": {}}, "log10_slope_per_step_back"),
        ({**good, "headlines": [good["headline"]]}, "exactly one"),
        ({**good, "training": []}, "training"),
        ({**good, "files": {"grad_norms.parquet": {"bytes": 1, "sha1": "x"}}}, "says 1"),
    ]:
        assert problem in summary_problem(bad, tmp_path), bad
    listed = {k: v for k, v in good.items() if k != "headline"}
    one = {"log10_slope_per_step_back": 1.0, "init_param": "gain", "init_value": 0.5}
    assert summary_problem({**listed, "headlines": [one]}, tmp_path) is None
    assert "init_param" in summary_problem(
        {**listed, "headlines": [{**one, "init_param": None}]}, tmp_path)


def test_write_json_is_strict(tmp_path):
    write_json({"a": float("nan"), "b": [float("inf")], "c": np.float32(1.5)}, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": None, "b": ["inf"], "c": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary left behind


def test_sweep_frames_concatenate(tmp_path):
    a = probe_frame(np.array([0]), profile(np.ones((1, 2))), config_columns(Config()))
    c = Config()
    c.init.name = type(c.init.name)("orthogonal")
    c.init.gain = 2.0
    b = probe_frame(np.array([0]), profile(np.ones((1, 2))), config_columns(c))
    both = pd.concat([a, b])
    assert both.init_gain.dtype == np.float64 and both.init_gain.isna().sum() == 2


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def test_every_config_key_is_a_column():
    # the schema's keys as OmegaConf sees them, independently of the dataclass walk
    keys = set(_leaves(OmegaConf.to_container(OmegaConf.structured(Config))))
    cols = config_schema_columns()
    assert {c.key for c in cols} == keys and len(cols) == len(keys)
    names = [c.name for c in cols]
    assert len(set(names)) == len(names)
    # the names the tables always had, kept; the rest by their key
    assert {"cell", "activation", "init", "init_std", "init_gain", "init_radius", "task",
            "vocab_size", "seq_len", "hidden_size", "batch_size", "loss_at", "dtype"} < set(names)
    assert {"train_lr", "train_clip", "train_optimizer", "train_bptt", "train_truncate",
            "train_steps", "train_epochs", "train_log_every", "cell_forget_bias",
            "probe_unroll", "seeds", "base_seed", "max_memory_gb", "logger"} < set(names)
    # a frame has every one, beside its own columns (seed: the network's seed)
    c = Config()
    c.seed = 3
    df = probe_frame(np.array([3, 4]), profile(np.ones((2, 2))), config_columns(c))
    assert set(names) < set(df.columns) and list(df.seed) == [3, 3, 4, 4]
    assert (df.base_seed == 3).all() and (df.train_lr == 1.0).all()


def test_config_columns_none_in_one_job_concatenate(tmp_path):
    a = probe_frame(np.array([0]), profile(np.ones((1, 2))), config_columns(Config()))
    c = Config()
    c.train.clip, c.train.epochs, c.cell.peephole, c.max_memory_gb = 1.0, 3, True, 2.0
    c.logger.dir, c.task.vocab_size = "logs", None
    b = probe_frame(np.array([0]), profile(np.ones((1, 2))), config_columns(c))
    write_parquet(a, tmp_path / "a.parquet")
    write_parquet(b, tmp_path / "b.parquet")
    for both in (pd.concat([a, b]), pd.concat([pd.read_parquet(tmp_path / "a.parquet"),
                                               pd.read_parquet(tmp_path / "b.parquet")])):
        assert both.train_clip.dtype == both.max_memory_gb.dtype == np.float64
        assert list(both.train_clip.isna()) == [True, True, False, False]
        assert both.train_epochs.dtype == both.vocab_size.dtype == "Int64"
        assert both.cell_peephole.dtype == "boolean" and both.cell_peephole.iloc[-1]
        assert list(both.logger_dir.iloc[[0, 2]]) == [None, "logs"]
    # a summary's config (nested dicts), even one written before a key existed
    old = config_columns({"train": {"lr": 0.5}, "activation": {"name": "relu"}})
    assert old["train_lr"] == 0.5 and old["activation"] == "relu" and old["seq_len"] is None
    df = with_config_dtypes(pd.DataFrame([old, config_columns(Config())]))
    assert df.seq_len.dtype == "Int64" and df.seq_len.isna().tolist() == [True, False]
