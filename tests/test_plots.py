"""The figures and the report: a tiny sweep (2 activations × 2 gains, the first job trained),
then experiments/report.py through a subprocess as a user runs it, and the plot helpers on it."""

import json
import os
import runpy
import subprocess
import sys
from itertools import product

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from rnnjax import load_metrics, load_summaries, load_sweep, plots
from rnnjax.config import register_configs, validate
from rnnjax.job import run_job

register_configs()

REPORT = ROOT / "experiments" / "report.py"
SMALL = ["hidden_size=8", "seq_len=12", "seeds=2", "batch_size=4"]
JOBS = {str(i): [f"activation={a}", "init=gaussian", f"init.gain={g}", "probe.loss_at=last"]
        for i, (a, g) in enumerate(product(("tanh", "relu"), (0.5, 2.0)))}
JOBS["0"] += ["train.steps=20", "train.log_every=10", "train.clip=1"]  # one job trains
FIGURES = ["heatmap.png", "decay_curves.png", "phase_diagram.png", "slope_vs_lyapunov.png",
           "training.png"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The jobs of JOBS under one directory, as a multirun lays them out."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:  # the JAX cache in a tmp dir, not ~/.cache
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            for name, overrides in JOBS.items():
                run_job(validate(compose("config", overrides=SMALL + overrides)), root / name)
    return root


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    """(the report's parent directory, the finished `report.py SWEEP --out .../figs`)."""
    out = tmp_path_factory.mktemp("report")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(out / "jax"),
               XDG_CACHE_HOME=str(out / "cache"))
    return out, subprocess.run([sys.executable, str(REPORT), str(sweep), "--out",
                                str(out / "figs")], env=env, capture_output=True, text=True,
                               timeout=300)


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The slope table of report.md: job -> {column: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]
    return {r["job"]: r for r in rows}


def test_report_writes_every_figure_and_the_markdown(report):
    out, p = report
    assert p.returncode == 0, p.stderr
    figs = out / "figs"
    for name in FIGURES:
        data = (figs / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, name
        assert f"wrote {figs / name}" in p.stdout
    text = (figs / "report.md").read_text()
    assert text.startswith("# ") and f"wrote {figs / 'report.md'}" in p.stdout
    for name in FIGURES:
        assert f"]({name})" in text


def test_report_table_shows_every_jobs_headline(report, sweep):
    out, _ = report
    rows = table_rows((out / "figs" / "report.md").read_text())
    assert sorted(rows) == sorted(JOBS)
    for job, row in rows.items():
        headline = json.loads((sweep / job / "summary.json").read_text())["headline"]
        slope = headline["log10_slope_per_step_back"]
        assert row["measured slope (log10/step back)"] == f"{slope:.4g}"
        assert float(row["measured slope (log10/step back)"]) == pytest.approx(slope, rel=1e-3)
        assert row["underflowed points"] == str(headline["n_underflow"])
        mf = headline["theory"]["mean_field"]["log10_factor_per_step"]
        assert row["mean field (log10/step)"] == f"{mf:.4g}"
    assert rows["0"]["configuration"] == "tanh / gaussian g=0.5 / clip=1 / 20 steps"


def test_report_on_one_run_leaves_out_what_it_lacks(sweep, tmp_path, capsys):
    main = runpy.run_path(str(REPORT))["main"]
    assert main([str(sweep / "1"), "--out", str(tmp_path)]) == 0  # untrained, one gain
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["decay_curves.png", "heatmap.png", "report.md", "slope_vs_lyapunov.png"]
    assert "phase_diagram" not in (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out.count("wrote") == 4


@pytest.mark.parametrize("name, message", [("missing", "is not a directory"),
                                           ("empty", "no finished job")])
def test_bad_path_is_one_line_and_exit_2(tmp_path, capsys, name, message):
    (tmp_path / "empty").mkdir()
    main = runpy.run_path(str(REPORT))["main"]
    assert main([str(tmp_path / name)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_quartiles_over_seeds_count_underflow_and_overflow():
    norms = {1: [0.0, 1e-3, 1e-2], 2: [0.0, 0.0, 1.0], 3: [1.0, np.inf, np.inf],
             4: [np.nan, 1e-2, 1e-4], 5: [1e-3, 1e-2, 1e-1]}
    df = pd.DataFrame([{"job": "a", "t": t, "seed": s, "grad_norm": g}
                       for t, gs in norms.items() for s, g in enumerate(gs)])
    stats = plots.profile_stats(df).set_index("t")
    assert stats["median"].tolist() == [-3.0, -np.inf, np.inf, -3.0, -2.0]
    assert stats.loc[1, "q25"] == -np.inf and stats.loc[1, "q75"] == pytest.approx(-2.5)
    assert stats.loc[5, "q25"] == pytest.approx(-2.5) and stats.loc[5, "q75"] == pytest.approx(-1.5)
    note = plots._dropped_note(stats)
    assert "of 5" in note and "1 underflowed to 0" in note and "1 overflowed" in note


def test_labels_name_what_varies(sweep):
    summaries = load_summaries(sweep).set_index("job")
    labels = plots.config_label(summaries.reset_index()).set_axis(summaries.index)
    assert labels.to_dict() == {"0": "tanh / gaussian g=0.5 / clip=1 / 20 steps",
                                "1": "tanh / gaussian g=2 / no clip / 0 steps",
                                "2": "relu / gaussian g=0.5 / no clip / 0 steps",
                                "3": "relu / gaussian g=2 / no clip / 0 steps"}
    df = load_sweep(sweep)
    same = df[df["job"].isin(["0", "1"])].assign(init_gain=1.0)  # identical configs
    assert set(plots.config_label(same)) == {"tanh / gaussian g=1 (job 0)",
                                             "tanh / gaussian g=1 (job 1)"}


def test_decay_curves_draw_each_jobs_mean_field_slope(sweep):
    df, summaries = load_sweep(sweep), load_summaries(sweep)
    fig = plots.decay_curves(df, summaries, hue="init_gain")
    dashed = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    slopes = sorted(np.polyfit(line.get_xdata(), line.get_ydata(), 1)[0] for line in dashed)
    expected = sorted(summaries[plots.MF + "log10_factor_per_step"])
    np.testing.assert_allclose(slopes, expected, rtol=1e-9, atol=1e-12)
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert titles == {"tanh · gaussian", "relu · gaussian"}


def test_critical_gain_and_slope_table(sweep):
    grid = np.linspace(0.5, 2.0, 31)
    assert plots._critical_gain(grid, grid**2) == pytest.approx(1.0, abs=1e-3)  # linear
    assert plots._critical_gain(grid, grid**2 / 16) is None  # sigmoid-like: never 1 here
    summaries = load_summaries(sweep)
    table = plots.slope_table(summaries)
    assert table["job"].tolist() == ["0", "1", "2", "3"]
    by_job = summaries.set_index("job")
    np.testing.assert_array_equal(table["measured slope (log10/step back)"],
                                  by_job.loc[table["job"], plots.SLOPE])


def test_training_curves_show_every_logged_step(sweep):
    fig = plots.training_curves(load_metrics(sweep), load_sweep(sweep))
    left, right = fig.axes[:2]
    assert left.get_ylabel().startswith("perplexity")  # a token task: perplexity, not loss
    profiles = [line for line in right.get_lines() if len(line.get_xdata())]
    assert len(profiles) == 3  # at steps 0, 10 and 20
    with pytest.raises(ValueError, match="not in the sweep"):
        plots.training_curves(load_metrics(sweep), load_sweep(sweep), job="nope")
