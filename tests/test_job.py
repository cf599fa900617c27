"""One job, in-process (compose the config, validate, call run_job on a temporary directory):
numbers beyond the dtype's range are flagged data, in the files, the summary and the log."""

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import config_schema_columns, load_summaries, load_sweep
from rnnjax.app.validate import validate

register_configs()
F32_MAX = float(np.finfo(np.float32).max)


def job(tmp_path, overrides, name="job"):
    """Runs one job; returns (summary, grad_norms frame, its directory)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=overrides))
    out = tmp_path / name
    summary = run_job(cfg, out)
    assert json.loads((out / "summary.json").read_text())["status"] == summary["status"]
    return summary, pd.read_parquet(out / "grad_norms.parquet"), out


@pytest.mark.e2e
def test_backward_overflow_is_flagged_the_same_way_on_any_cpu(tmp_path):
    # tanh in the chaotic phase (g = 4): the gradient grows ~0.07 decades per step back, ~70
    # decades over 1000 steps: beyond float32 (1e38), within float64 (1e308); the forward
    # pass stays bounded.
    common = ["activation=tanh", "init=gaussian", "init.gain=4", "seq_len=1000",
              "hidden_size=16", "probe.loss_at=last", "batch_size=2", "seeds=2"]
    s32, d32, _ = job(tmp_path, common + ["dtype=float32"], "f32")
    s64, d64, _ = job(tmp_path, common + ["dtype=float64"], "f64")
    h32, h64 = s32["headline"], s64["headline"]
    # float64: finite and positive everywhere, nothing flagged.
    assert np.isfinite(d64.grad_norm).all() and (d64.grad_norm > 0).all()
    assert s64["status"] == "ok" and h64["n_nonfinite"] == h64["n_overflow"] == 0
    assert not d64.overflow.any() and d64.grad_norm.max() > 1e45
    # float32: every row kept; `overflow` marks exactly the inf rows, which are the earliest
    # steps of each seed (the backward chain is lost from where an entry left the range back
    # to t = 1); norms of finite entries beyond float32's maximum are reported, not flagged.
    assert s32["status"] == "nonfinite" and h32["n_overflow"] == int(d32.overflow.sum()) > 0
    assert (d32.overflow == np.isposinf(d32.grad_norm)).all()
    assert not d32.grad_norm.isna().any() and not d32.underflow.any()
    assert not d32.forward_overflow.any() and (d32.forward_overflow_t == 0).all()
    for _, seed in d32.groupby("seed"):
        seed = seed.sort_values("t")
        n = int(seed.overflow.sum())
        assert n > 0 and seed.overflow.iloc[:n].all() and not seed.overflow.iloc[n:].any()
    assert h32["log10_slope_per_step_back"] > 0.03 and h64["log10_slope_per_step_back"] > 0.03


@pytest.mark.parametrize("case", [
    ["activation=linear", "init=identity", "init.gain=1.5", "seq_len=300"],
    ["activation=relu", "init=gaussian", "init.gain=1e6", "seq_len=64"],
])
@pytest.mark.e2e
def test_forward_overflow_is_flagged(tmp_path, caplog, case):
    """A forward pass that leaves float32's range makes every gradient NaN: flagged per seed
    (the first t whose H_t is not finite), in the columns, the headline and the log line."""
    overrides = case + ["hidden_size=8", "batch_size=2", "seeds=2", "probe.loss_at=last"]
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        summary, df, out = job(tmp_path, overrides)
    h = summary["headline"]
    assert summary["status"] == "nonfinite"
    assert h["n_forward_overflow"] == 2 and df.forward_overflow.all()
    assert "FORWARD OVERFLOW in 2 of 2 seeds" in caplog.text
    # The first non-finite H_t, against a float64 numpy forward pass of the same weights: the
    # first step with an entry beyond float32's maximum (one step of slack for rounding).
    params, batch = np.load(out / "params.npz"), np.load(out / "batch.npz")
    phi = {"linear": lambda a: a, "relu": lambda a: np.maximum(a, 0)}[case[0].split("=")[1]]
    for s, t_flag in enumerate(h["forward_overflow_t_per_seed"]):
        W_xh, W_hh, b = (np.asarray(params[k][s], np.float64) for k in ("W_xh", "W_hh", "b_h"))
        x = batch["x"][s]
        h_t = np.zeros((x.shape[0], W_hh.shape[0]))
        with np.errstate(over="ignore", invalid="ignore"):
            for t in range(1, x.shape[1] + 1):
                h_t = phi(W_xh[x[:, t - 1]] + b + h_t @ W_hh)
                if not (np.abs(h_t) <= F32_MAX).all():
                    break
        assert abs(t_flag - t) <= 1, (s, t_flag, t)
        assert (df[df.seed == s].forward_overflow_t == t_flag).all()
    # the gradients are NaN there, and not mistaken for a backward overflow
    assert df.grad_norm.isna().all() and not df.overflow.any() and h["n_overflow"] == 0


@pytest.mark.e2e
def test_underflow_is_flagged_and_float64_is_exact(tmp_path):
    # linear, W_hh = 0.5 * orthogonal: exactly 0.5 per step back, 1e-60 after 200 steps
    common = ["activation=linear", "init=orthogonal", "init.gain=0.5", "seq_len=200",
              "hidden_size=8", "probe.loss_at=last", "batch_size=2", "seeds=2"]
    s32, d32, _ = job(tmp_path, common + ["dtype=float32"], "f32")
    s64, d64, _ = job(tmp_path, common + ["dtype=float64"], "f64")
    h32, h64 = s32["headline"], s64["headline"]
    assert s64["status"] == "ok" and h64["n_underflow"] == 0 and not d64.underflow.any()
    assert d64.grad_norm.min() < 1e-50
    assert h64["log10_slope_per_step_back"] == pytest.approx(np.log10(0.5), abs=1e-9)
    assert s32["status"] == "ok" and h32["n_underflow"] == int(d32.underflow.sum()) > 0
    assert (d32.underflow == (d32.grad_norm == 0)).all() and not d32.overflow.any()
    # The float32 slope is fitted above the underflowed steps and is exact there too.
    assert h32["log10_slope_per_step_back"] == pytest.approx(np.log10(0.5), abs=1e-4)


@pytest.mark.e2e
def test_the_default_job_shows_vanishing_beside_its_theory(tmp_path, caplog):
    # The Quick start's first command (no overrides: tanh, normal(0.01), T=64, H=64, 4 seeds):
    # the loss at the last step, so the profile decays as the mean field predicts.
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        summary, df, _ = job(tmp_path, [])
    h, theory = summary["headline"], summary["headline"]["theory"]
    assert summary["config"]["probe"]["loss_at"] == "last" and theory["applies"] is True
    predicted = theory["mean_field"]["log10_factor_per_step"]
    assert h["log10_slope_per_step_back"] < -1.0 and predicted < -1.0
    assert h["log10_slope_per_step_back"] == pytest.approx(predicted, rel=0.03)
    line = next(r.getMessage() for r in caplog.records if "per step back" in r.getMessage())
    assert f"mean field {predicted:+.4f}" in line
    assert (df["T"] == 64).all() and df.seed.nunique() == 4


@pytest.mark.e2e
def test_tables_carry_the_whole_config(tmp_path):
    # Probes only (metrics.parquet: test_cli's training job); the training options are still
    # config, and truncation cuts the second job's profile.
    common = ["seq_len=4", "hidden_size=3", "batch_size=2", "seeds=2", "seed=7", "probe.unroll=2"]
    summary, df, out = job(tmp_path, [*common, "probe.loss_at=all", "train.optimizer=adam",
                                      "train.lr=0.05"], "all")
    job(tmp_path, [*common, "train.clip=0.5", "train.bptt=truncated", "train.truncate=2"],
        "clipped")
    # the loss over all steps: the predictions are kept, marked as not applying
    assert summary["headline"]["theory"]["applies"] is False
    tables = {"grad_norms.parquet": df, "load_summaries": load_summaries(out)}
    for col in config_schema_columns():
        want = summary["config"]
        for part in col.key.split("."):
            want = want[part]
        for name, table in tables.items():
            assert col.name in table, (name, col.name)
            got = table[col.name].unique()
            same = want is None if pd.isna(got[0]) else got[0] == want
            assert len(got) == 1 and same, (name, col.name, got, want)
    assert sorted(df.seed.unique()) == [7, 8]
    # a sweep over the training options can be grouped on them
    both = load_sweep(tmp_path)
    assert both.train_clip.dtype == np.float64 and both.train_truncate.dtype == "Int64"
    assert sorted(both.groupby("train_clip", dropna=False).job.first()) == ["all", "clipped"]
    assert both.groupby("loss_at").train_bptt.first().to_dict() == {"all": "full",
                                                                    "last": "truncated"}
    assert load_summaries(tmp_path).set_index("job").train_lr.to_dict() == {"all": 0.05,
                                                                           "clipped": 1.0}
    # the network's names for the report: the vanilla RNN's free activation; no cell options
    assert (summary["model_label"], summary["cell_label"]) == ("tanh", "")
    sums = load_summaries(out)
    assert list(sums.model_label) == ["tanh"] and list(sums.cell_label) == [""]


@pytest.mark.parametrize(("cell", "options", "activation", "want"), [
    ("vanilla", {}, "relu", ("", "relu")),
    ("gru", {}, "tanh", ("", "gru")),
    ("urnn", {}, "tanh", ("", "urnn")),
    ("lstm", {"forget_bias": 1.0, "peephole": True}, "tanh", ("forget_bias=1, peephole", "lstm")),
    ("lru", {"r_min": 0.95, "r_max": 0.95}, "tanh", ("r=0.95", "lru")),
])
def test_label_keys_name_the_network_from_the_registry(cell, options, activation, want):
    from rnnjax.app.summary import label_keys

    assert label_keys(cell, options, activation) == dict(zip(("cell_label", "model_label"), want,
                                                             strict=True))


def test_training_log_numbers_stay_short_when_a_run_diverges():
    # A diverging adding run logged "train MSE 659378740803645603840.0000".
    from rnnjax.app.progress import progress_line as _progress

    line = _progress({"train_loss": 6.59e20, "val_loss": math.nan}, tokens=False)
    assert line == "train MSE 6.59e+20, val MSE nan (always predicting 1 scores 0.1667)"
    line = _progress({"train_loss": 3.25, "train_ppl": 25.79, "val_loss": 1e6,
                      "val_ppl": math.inf}, tokens=True)
    assert line == "train loss 3.2500 (ppl 25.790), val loss 1e+06 (ppl inf)"


def test_job_and_train_functions_take_at_most_eight_parameters_and_job_py_stays_small():
    import ast

    from conftest import ROOT

    for rel in ("rnnjax/app/job.py", "rnnjax/app/progress.py", "rnnjax/core/train.py"):
        text = (ROOT / rel).read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                assert n <= 8, f"{rel}: {node.name} takes {n} parameters"
    assert len((ROOT / "rnnjax/app/job.py").read_text().splitlines()) < 500
