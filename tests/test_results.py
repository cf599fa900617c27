import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from rnnjax.app.config import Config
from rnnjax.app.results import (
    JOB_KEYS,
    config_columns,
    config_schema_columns,
    file_record,
    fit_window,
    flat_config,
    load_metrics,
    load_summaries,
    load_sweep,
    log10_slope,
    order_keys,
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


def test_flat_config_names_columns_as_the_schema_does_without_it():
    # load_summaries flattens a summary's config from its dicts alone (no Hydra, no JAX): the
    # same columns and values as the schema's walk, for the defaults and for a changed config
    c = Config()
    c.train.clip, c.cell.peephole, c.task.vocab_size, c.seed = 1.0, True, None, 7
    for cfg in (Config(), c):
        config = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
        assert flat_config(config) == config_columns(config)
    listed = {"init": {"name": "gaussian", "gain": [0.5, 2.0]}}
    assert flat_config(listed) == {"init": "gaussian", "init_gain": None}


def write_job(job, cfg: Config, **extra):
    """A finished job directory of `cfg` (one seed, T = 3), its summary with `extra` keys."""
    job.mkdir(parents=True)
    df = probe_frame(np.array([0]), profile(np.ones((1, 3))), config_columns(cfg))
    write_parquet(df, job / "grad_norms.parquet")
    write_parquet(df[["seed"]].assign(train_step=0, train_loss=1.0), job / "metrics.parquet")
    config = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    summary = finished_summary_of(job, config=config, **extra)
    summary["files"]["metrics.parquet"] = file_record(job / "metrics.parquet")
    write_json(summary, job / "summary.json")


def test_summary_config_columns_take_the_dtypes_their_parquet_holds(tmp_path):
    # None in one job and a number in the other: the schema's nullable dtypes, as load_sweep
    # gives them, read from the jobs' parquet files (not from the schema: no JAX)
    b = Config()
    b.train.epochs, b.cell.peephole, b.init.gain = 3, True, 2
    write_job(tmp_path / "a", Config())
    write_job(tmp_path / "b", b)
    s = load_summaries(tmp_path).set_index("job")
    sweep = load_sweep(tmp_path)
    for col in ("train_epochs", "cell_peephole", "init_gain", "train_lr", "seq_len", "resume"):
        assert s[col].dtype == sweep[col].dtype, col
    assert s["train_epochs"].dtype == "Int64" and s.loc["b", "train_epochs"] == 3
    assert s["cell_peephole"].dtype == "boolean" and s.loc["b", "cell_peephole"]
    assert s["init_gain"].dtype == np.float64  # an init parameter is a number (Any in YAML)


def test_loaders_carry_the_summary_keys_of_the_cell(tmp_path):
    keys = {"cell_label": "forget_bias=1", "model_label": "lstm", "cell_order": 2.0}
    write_job(tmp_path / "a", Config(), **keys)
    write_job(tmp_path / "b", Config())  # written before the keys existed
    for frame in (load_sweep(tmp_path), load_metrics(tmp_path), load_summaries(tmp_path)):
        a, b = frame[frame.job == "a"], frame[frame.job == "b"]
        for k, v in keys.items():
            assert (a[k] == v).all() and b[k].isna().all(), k
        assert not set(JOB_KEYS) - set(keys) & set(frame.columns)


def test_order_keys_follow_the_registries():
    from rnnjax.core.cells import ACTIVATIONS, CELLS
    from rnnjax.core.init import INITS

    keys = {c: order_keys(c, "relu", "xavier") for c in CELLS}
    assert sorted(CELLS, key=lambda c: (keys[c]["cell_order"], c)) == list(CELLS)
    for c, k in keys.items():
        assert k["cell_takes_init"] == (CELLS[c].inits is None)
        assert k["cell_takes_activation"] == (CELLS[c].activations is None)
        assert k["activation_order"] == list(ACTIVATIONS).index("relu")
        assert k["init_order"] == list(INITS).index("xavier")
    assert order_keys("vanilla", "nope", "nope")["init_order"] == len(INITS)
