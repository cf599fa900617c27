"""The figures (rnnjax.report.plots) and the report (rnnjax.report.build), in-process: a tiny
sweep of real jobs (two activations × two gains, an LSTM, a loss over all steps, training on
the adding task), plus frames built here where a figure's number must be exact (the x-range, the
colour scale, the baselines, the power laws). What a figure draws is read back from its
artists and checked against the summaries."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from matplotlib.backends.backend_agg import FigureCanvasAgg

from rnnjax import load_metrics, load_summaries, load_sweep
from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import order_keys
from rnnjax.app.validate import validate
from rnnjax.report import build as report
from rnnjax.report import frames, plots

register_configs()

SMALL = ["hidden_size=8", "seq_len=12", "seeds=2", "batch_size=4"]
JOBS = {str(i): [f"activation={a}", "init=gaussian", f"init.gain={g}", "probe.loss_at=last"]
        for i, (a, g) in enumerate([("tanh", 0.5), ("tanh", 2.0), ("relu", 0.5), ("relu", 2.0)])}
JOBS["4"] = ["cell=lstm", "probe.loss_at=last"]  # d2l's small weights: its gate prediction
JOBS["5"] = ["init=normal", "probe.loss_at=all"]  # flat: no prediction applies
JOBS["6"] = ["task=adding", "train.steps=20", "train.log_every=10", "train.optimizer=rmsprop",
             "train.lr=0.001", "train.clip=1"]  # trains, beside its baseline
PROBED = [str(i) for i in range(6)]
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
def probed(sweep):
    """(load_sweep, load_summaries) of the jobs that only probe."""
    df, summaries = load_sweep(sweep), load_summaries(sweep)
    return df[df["job"].isin(PROBED)], summaries[summaries["job"].isin(PROBED)]


@pytest.fixture(scope="module")
def written(sweep, tmp_path_factory):
    """(the --out directory, report.main's exit code) of `report SWEEP --out DIR`."""
    out = tmp_path_factory.mktemp("report")
    return out, report.main([str(sweep), "--out", str(out)])


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The slope table of report.md: job -> {column: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]
    return {r["job"]: r for r in rows}


def dashed(fig) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "--"]


def legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.mark.e2e
def test_report_writes_every_figure_and_the_markdown(written, capsys):
    out, code = written
    assert code == 0
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, name
    text = (out / "report.md").read_text()
    assert text.startswith("# ")
    for name in FIGURES:
        assert f"]({name})" in text


@pytest.mark.e2e
def test_report_table_shows_every_jobs_headline(written, sweep):
    out, _ = written
    rows = table_rows((out / "report.md").read_text())
    assert sorted(rows) == sorted(JOBS)
    for job, row in rows.items():
        headline = json.loads((sweep / job / "summary.json").read_text())["headline"]
        slope = headline["log10_slope_per_step_back"]
        assert row["measured slope (log10/step back)"] == f"{slope:.4g}"
        assert row["underflowed points"] == str(headline["n_underflow"])
        theory = headline["theory"]
        if job in ("0", "1", "2", "3"):
            mf = theory["mean_field"]["log10_factor_per_step"]
            assert row["prediction"] == "mean field"
            assert row["predicted (log10/step)"] == f"{mf:.4g}"
    assert rows["4"]["predicted (log10/step)"] == (
        f"{json.loads((sweep / '4' / 'summary.json').read_text())['headline']['theory']['predicted_log10_slope_per_step_back']:.4g}")  # noqa: E501
    assert rows["5"]["prediction"] == "none (loss at all steps)"
    assert rows["5"]["predicted (log10/step)"] == "—"
    assert rows["6"]["configuration"].startswith("vanilla / tanh / normal std=0.01 / adding")
    assert "clip=1 / 20 steps" in rows["6"]["configuration"]


@pytest.mark.e2e
def test_report_on_one_run_leaves_out_what_it_lacks(sweep, tmp_path):
    assert report.main([str(sweep / "5"), "--out", str(tmp_path)]) == 0  # loss at all steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decay_curves.png", "heatmap.png",
                                                          "report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "No prediction is drawn" in text and "phase_diagram" not in text


@pytest.mark.parametrize("name, message", [("missing", "is not a directory"),
                                           ("empty", "no finished job")])
def test_bad_path_is_one_line_and_exit_2(tmp_path, capsys, name, message):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / name)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_decay_curves_draw_exactly_the_predictions_that_apply(probed):
    df, summaries = probed
    fig = plots.decay_curves(df, summaries, hue="init_gain")
    slopes = sorted(np.polyfit(line.get_xdata(), line.get_ydata(), 1)[0] for line in dashed(fig))
    pred = frames.predictions(summaries)
    assert not pred.loc["5", "applies"]  # loss at all steps
    np.testing.assert_allclose(slopes, sorted(pred.loc[pred["applies"], "slope"]), rtol=1e-9,
                               atol=1e-12)
    assert len(slopes) == 5  # four vanilla jobs and the LSTM
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert titles == {"tanh · gaussian / loss at last", "relu · gaussian / loss at last",
                      "lstm\nnormal std=0.01 / loss at last",
                      "tanh\nnormal std=0.01 / loss at all"}  # no empty panel
    texts = legend_texts(fig)
    assert "n/a" not in " ".join(texts) and all(texts)  # the LSTM's has no gain: its label
    assert {"gaussian g=0.5", "gaussian g=2", "normal std=0.01"} <= set(texts)


def test_a_flat_profile_is_not_zoomed_into_noise(probed):
    df, summaries = probed
    flat = df[df["job"] == "5"]  # loss over all steps: each step's own term keeps it flat
    spread = np.ptp(np.log10(flat.groupby("t")["grad_norm"].median()))
    assert spread < 0.5
    fig = plots.decay_curves(flat, summaries[summaries["job"] == "5"])
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo == pytest.approx(plots.MIN_DECADES)
    assert not dashed(fig) and "No prediction drawn" in fig.texts[-1].get_text()


def synthetic(T: int, slopes: dict[str, float], seeds: int = 2, floor: float = 1e-40,
              **columns) -> pd.DataFrame:
    """A load_sweep-like frame: job j's norm falls by 10^slope per step back, underflowing to 0
    below `floor`."""
    rows = []
    for job, s in slopes.items():
        for seed in range(seeds):
            for t in range(1, T + 1):
                g = 10.0 ** (s * (T - t) + 0.01 * seed)
                rows.append({"job": job, "seed": seed, "t": t, "T": T, "train_step": 0,
                             "grad_norm": g if g > floor else 0.0,
                             **{k: v[job] if isinstance(v, dict) else v
                                for k, v in columns.items()}})
    df = pd.DataFrame(rows)
    # what a job writes beside its config (load_sweep carries it): where its cell, activation
    # and init stand, and which of them its cell takes
    keys = df.apply(lambda r: order_keys(r.get("cell", "vanilla"), r.get("activation", "tanh"),
                                         r.get("init", "normal")), axis=1)
    return pd.concat([df, pd.DataFrame(list(keys), index=df.index)], axis=1)


def test_the_x_range_follows_the_data_and_no_panel_is_empty():
    # three activations, one row: three panels; the gradient underflows 40 steps back of 1000
    df = synthetic(1000, {"a": -1.0, "b": -0.5, "c": -1.0},
                   activation={"a": "tanh", "b": "sigmoid", "c": "relu"}, init="normal",
                   init_std=0.01)
    fig = plots.decay_curves(df)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["tanh · normal std=0.01",
                                                 "sigmoid · normal std=0.01",
                                                 "relu · normal std=0.01"]
    assert len([ax for ax in fig.axes if not ax.get_visible()]) == 0
    last = max(k for k in range(1000) if 10.0 ** (-0.5 * k) > 1e-40)  # b's last finite point
    assert panels[0].get_xlim() == pytest.approx((0, last * 1.03))


def test_a_sweep_over_cells_is_one_row_of_panels_each_with_its_y_axis():
    # The cells that take no init (urnn, lru) made a second row: 2 × 5 panels with 5 hidden,
    # titles overlapping and no y-axis labels on the second row.
    cells = {"a": "vanilla", "b": "gru", "c": "lstm", "d": "urnn", "e": "lru"}
    takes_init = {k: c in ("vanilla", "gru", "lstm") for k, c in cells.items()}
    df = synthetic(50, {"a": -1.0, "b": -0.3, "c": -0.3, "d": 0.0, "e": -0.01}, cell=cells,
                   activation={k: "tanh" if v else None for k, v in takes_init.items()},
                   init={k: "normal" if v else None for k, v in takes_init.items()},
                   init_std={k: 0.01 if v else None for k, v in takes_init.items()})
    fig = plots.decay_curves(df, hue="cell")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "tanh · normal std=0.01", "gru · normal std=0.01", "lstm · normal std=0.01", "urnn",
        "lru"]
    assert len(panels) == len(fig.axes) == 5
    assert len({ax.get_position().y0 for ax in panels}) == 1  # one row
    fig.canvas.draw()
    assert any(t.get_text() for t in panels[0].get_yticklabels())
    assert len(plots.decay_curves(pd.concat([df, df.assign(job=df.job + "2", cell="gru")]),
                                  hue="cell").axes) > 5  # where a model has two rows: a grid


def test_one_row_per_initialization_with_colours_told_apart():
    inits = {"a": ("gaussian", 1.0), "b": ("orthogonal", 1.0), "c": ("identity", 1.0),
             "d": ("xavier", None)}
    df = synthetic(30, {"a": -0.1, "b": -0.2, "c": 0.0, "d": -0.1}, activation="tanh",
                   init={k: v[0] for k, v in inits.items()},
                   init_gain={k: v[1] for k, v in inits.items()})
    fig = plots.decay_curves(df, hue="init", row="init")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    # the gaussian and orthogonal rows apart, in the order of rnnjax.core.init.INITS
    assert titles == ["tanh · xavier", "tanh · orthogonal g=1", "tanh · identity g=1",
                      "tanh · gaussian g=1"]
    colours = {ax.get_title(): ax.get_lines()[0].get_color() for ax in fig.axes
               if ax.get_visible() and ax.get_lines()}
    assert len(set(colours.values())) == 4
    assert set(colours.values()) <= set(plots.OKABE_ITO)


def notes(fig) -> list[str]:
    """The figure's texts but its title: its notes."""
    return [t.get_text() for t in fig.texts if t.get_text() != fig.get_suptitle()]


def drawn(fig):
    """The renderer of `fig` drawn on an Agg canvas (for window extents)."""
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def test_the_heatmap_labels_round_timesteps_that_do_not_run_together():
    # seaborn's "auto" labelled every second timestep of 64: "1 3 5 ... 11131517" ran together.
    fig = plots.heatmap(synthetic(64, {"a": -0.5, "b": -0.02}))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1", "5", "10", "15", "20", "25", "30", "35", "40", "45", "50", "55",
                      "60"]
    renderer = drawn(fig)
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_the_heatmap_colours_mean_the_same_change_on_both_sides():
    # A flat profile (uRNN, LRU, linear RNN with orthogonal W) 0.6 decades above the other
    # jobs' gradient at t = T was the darkest red: a red half of 0.6 decades, a blue one of 24.
    df = synthetic(50, {"a": -0.5, "b": -0.02, "c": 0.0})
    df.loc[df["job"] == "c", "grad_norm"] *= 10 ** 0.6
    fig = plots.heatmap(df)
    mesh = fig.axes[0].collections[0]
    norm, values = mesh.norm, mesh.get_array().reshape(3, 50)  # rows: jobs a, b, c
    assert norm.vmin == -norm.vmax and norm(0.0) == 0.5  # symmetric about "no change"
    assert norm(1.0) - 0.5 == pytest.approx(0.5 - norm(-1.0))
    assert values[0, 0] == pytest.approx(-0.5 * 49) == norm.vmin  # a at t = 1, from t = T
    assert np.abs(norm(values[2]) - 0.5).max() < 1e-9  # the flat profile: neutral throughout
    assert mesh.colorbar.long_axis.get_label().get_text() == (  # what, units, the centre
        "log10 ‖dL/dH_t‖ − log10 ‖dL/dH_T‖\n(decades; medians over seeds)\n"
        "0 (white): as large as at t = T")
    renderer = drawn(fig)
    ticks = mesh.colorbar.get_ticks()  # readable on both sides of 0
    ticks = ticks[(ticks >= norm.vmin) & (ticks <= norm.vmax)]  # the ones shown
    assert 0 in ticks and (ticks < 0).sum() >= 2 and (ticks > 0).sum() >= 2
    boxes = [t.get_window_extent(renderer) for t in mesh.colorbar.long_axis.get_ticklabels()
             if t.get_text()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not notes(fig)
    # A job whose median at t = T overflowed: its row relative to its last finite median.
    inf = df.assign(grad_norm=df["grad_norm"].where((df["job"] != "c") | (df["t"] < 50), np.inf))
    fig = plots.heatmap(inf)
    assert np.abs(fig.axes[0].collections[0].get_array().reshape(3, 50)[2, :49]).max() < 1e-9
    assert notes(fig)[0].endswith("\nRelative to their last finite median (the median at "
                                  "t = T is not finite):  (job c).")
    # A flat profile alone: its noise (0.01 decades between seeds) stays pale.
    mesh = plots.heatmap(synthetic(20, {"u": 0.0})).axes[0].collections[0]
    assert mesh.norm.vmax == plots.MIN_DECADES / 2
    assert np.abs(mesh.norm(mesh.get_array()) - 0.5).max() < 0.01


def test_the_decay_legend_title_names_its_entries():
    # hue init_gain (report.decay_hue's pick) colours by the init with its parameter: the
    # title said "gain g" above "normal std=0.01".
    df = synthetic(20, {"a": -0.1, "b": -0.3, "c": -0.05}, activation="tanh",
                   init={"a": "gaussian", "b": "gaussian", "c": "normal"},
                   init_gain={"a": 0.5, "b": 2.0, "c": None},
                   init_std={"a": None, "b": None, "c": 0.01})
    hue = report.decay_hue(df)
    assert hue == "init_gain"
    legend = plots.decay_curves(df, hue=hue).legends[0]
    assert legend.get_title().get_text() == "initialization"
    assert plots.hue_title(hue) == "initialization"  # what report.py's caption can say
    assert {t.get_text() for t in legend.get_texts()} == {
        "gaussian g=0.5", "gaussian g=2", "normal std=0.01", "interquartile range over seeds"}
    legend = plots.decay_curves(df.assign(T=df["job"].map({"a": 20, "b": 30, "c": 40})),
                                hue="T").legends[0]
    assert legend.get_title().get_text() == "timesteps T"


def test_a_grid_of_rows_has_one_y_label():
    # fig2's six rows each labelled their first panel, and each label ran into its neighbours.
    inits = {"a": "normal", "b": "xavier", "c": "orthogonal"}
    df = synthetic(20, {"a": -0.1, "b": -0.3, "c": -0.05}, activation="tanh", init=inits)
    fig = plots.decay_curves(df, hue="init", row="init")
    assert len([ax for ax in fig.axes if ax.get_visible() and ax.get_title()]) == 3
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == []
    assert fig._supylabel is not None and fig._supylabel.get_text() == plots.LOG10_NORM


def test_a_single_panel_fills_the_figure():
    # One job: a panel 2.5 of 7.1 inches wide beside the legend, and a title 10.8 inches wide
    # that widened the saved PNG with blank space.
    df = synthetic(30, {"a": -0.1}, activation="tanh", init="normal", init_std=0.01)
    fig = plots.decay_curves(df)
    renderer = drawn(fig)
    assert len(fig.axes) == 1
    panel, legend = fig.axes[0].get_window_extent(renderer), fig.legends[0].get_window_extent()
    assert panel.width / fig.dpi > 4  # as wide as a panel of a larger grid
    assert 0 <= legend.x0 - panel.x1 < 0.5 * fig.dpi  # the legend right beside it
    box = fig.get_tightbbox(renderer)  # what bbox_inches="tight" saves, in inches
    assert box.x0 >= 0 and box.x1 <= fig.get_figwidth()  # nothing beyond the figure


def summaries_of(points: list[tuple[str, float, float]]) -> pd.DataFrame:
    """A load_summaries-like frame: one job per (activation, gain, slope), the loss at the last
    step, the top Lyapunov exponent equal to the slope."""
    return pd.DataFrame([{
        "job": str(i), "config.activation.name": a, "config.init.name": "gaussian",
        "config.init.gain": g, "config.probe.loss_at": "last", frames.SLOPE: s,
        frames.LYAPUNOV: s, frames.MF + "gain": g, frames.MF + "input_var": 0.1,
        frames.MF + "bias_var": 0.0, frames.MF + "log10_factor_per_step": s}
        for i, (a, g, s) in enumerate(points)])


def test_slope_vs_lyapunov_tick_labels_do_not_run_together():
    # A narrow range: 11 labels "−0.0175" … "0.0075", each into the next.
    s = summaries_of([("tanh", 1.0, v) for v in np.linspace(-0.0123, 0.0031, 6)])
    fig = plots.slope_vs_lyapunov(s)
    renderer = drawn(fig)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    boxes = [t.label1.get_window_extent(renderer) for t in ax.xaxis.get_major_ticks()
             if lo <= t.get_loc() <= hi]
    assert len(boxes) >= 3
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not notes(fig)  # no point hides another: no note


def curse_summaries(r) -> pd.DataFrame:
    """LRU summaries with the curse of memory's theory: at each r, ‖dL/dλ‖ grows as
    (1/(1-r))^1 normalized and ^1.5 not, ‖dL/dν_log‖ as ^0 and ^0.5."""
    return pd.DataFrame([{"job": f"{v}{n}", frames.THEORY + "r": v,
                          frames.THEORY + "inverse_one_minus_r": 1 / (1 - v),
                          "config.cell.normalize": n,
                          frames.THEORY + "lambda_grad_norm": (1 / (1 - v)) ** (1 if n else 1.5),
                          frames.THEORY + "nu_log_grad_norm": 0.03 * (1 / (1 - v)) ** (
                              0 if n else 0.5)} for v in r for n in (True, False)])


def test_coinciding_points_are_named():
    both = [("tanh", 1.0, -0.05), ("linear", 1.0, -0.05), ("tanh", 2.0, 0.1)]
    note = "2 points coincide: tanh / gaussian g=1 and linear / gaussian g=1."
    for figure in (plots.phase_diagram, plots.slope_vs_lyapunov):
        assert notes(figure(summaries_of(both))) == [note]
    r = [0.0, 0.9, 0.99]  # at r = 0 (memory 1) both normalizations give the same gradients
    s = curse_summaries(r)
    assert notes(plots.curse_of_memory(s)) == [
        "‖dL/dλ‖: 2 points coincide: not normalized r=0 and normalized r=0.\n"
        "‖dL/dν_log‖: 2 points coincide: not normalized r=0 and normalized r=0."]
    # Many places where points coincide (a sweep of linear and tanh networks, fig6's 11): one
    # line counts them; a line each squeezed the axes to nothing.
    many = [(act, g, -0.05 * g) for g in (0.5, 1.0, 1.5, 2.0) for act in ("tanh", "linear")]
    fig = plots.slope_vs_lyapunov(summaries_of(many))
    assert notes(fig) == ["8 points lie on top of one another in 4 places (e.g. tanh / gaussian "
                          "g=0.5 and linear / gaussian g=0.5); the slope table lists every job."]
    assert fig.axes[0].get_position().height > 0.4  # the axes keep most of the figure


def test_training_curves_draw_the_memoryless_baselines(sweep):
    path = sweep / "6"  # the adding task, T = 12
    metrics, df = load_metrics(path), load_sweep(path)
    # the copy task's baseline, as a copy job of T = 23 steps would have it (loss over all)
    copy = metrics.assign(task="copy", T=23, loss_at="all")
    for m, expected in ((metrics, 1 / 6), (copy, 10 * math.log(8) / 23)):
        fig = plots.training_curves(m, df)
        flat = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
        assert [line.get_ydata()[0] for line in flat] == [pytest.approx(expected)]
        assert any("memoryless baseline" in t for t in legend_texts(fig))
    # A token task's axis is perplexity: the baseline drawn and labelled as exp(loss) (the
    # label gave only the loss, 0.9041, beside a line at 2.47).
    ppl = copy.assign(train_ppl=np.exp(copy.train_loss), val_ppl=np.exp(copy.val_loss))
    fig = plots.training_curves(ppl, df)
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines()
            if line.get_linestyle() == ":"] == [pytest.approx(math.exp(10 * math.log(8) / 23))]
    assert any(t.endswith(f"as perplexity: {math.exp(10 * math.log(8) / 23):.4g}")
               for t in legend_texts(fig))
    last = copy.assign(loss_at="last")  # the loss at the last step: a guess among 8
    fig = plots.training_curves(last, df)
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines()
            if line.get_linestyle() == ":"] == [pytest.approx(math.log(8))]


def test_training_profiles_before_and_after(sweep):
    path = sweep / "6"
    df, summaries = load_sweep(path), load_summaries(path)
    fig = plots.before_after(df, summaries, load_metrics(path),
                             names={df["job"].iloc[0]: "tanh RNN"})
    before, after = fig.axes[:2]
    assert before.get_title() == "at initialization"
    assert after.get_title() == "after 20 training steps"
    for ax, step in ((before, 0), (after, 20)):
        thick = [line for line in ax.get_lines() if line.get_linewidth() > 2]
        stats = frames.profile_stats(df[df["train_step"] == step])
        np.testing.assert_allclose(thick[0].get_ydata(), stats["median"], rtol=1e-12)
        assert len([line for line in ax.get_lines() if line.get_linewidth() < 1]) == 2  # seeds
    assert any(t.startswith("tanh RNN (2 seeds)") for t in legend_texts(fig))


def test_cells_figures(sweep, probed):
    df, summaries = probed
    fig = plots.cells_at_init(df, summaries)
    lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert len(lines) == len(PROBED)
    for line in lines:  # relative to t = T, where every line starts at 0 decades
        x, y = line.get_xdata(), line.get_ydata()
        assert x[np.argmin(x)] == 0 and y[np.argmin(x)] == pytest.approx(0, abs=1e-12)
    metrics = load_metrics(sweep)
    both = pd.concat([metrics, metrics.assign(task="copy", T=23, loss_at="all", job="copy")])
    fig = plots.cells_training(both)
    baselines = sorted(line.get_ydata()[0] for ax in fig.axes for line in ax.get_lines()
                       if line.get_linestyle() == ":")
    assert baselines == pytest.approx(sorted([1 / 6, 10 * math.log(8) / 23]))


def test_curse_of_memory_shows_the_fitted_powers():
    r = np.array([0.5, 0.9, 0.99, 0.999])
    s = curse_summaries(r)
    fig = plots.curse_of_memory(s)
    texts = legend_texts(fig)
    assert "normalized: slope 1.00 (theory 1)" in texts
    assert "not normalized: slope 1.50 (theory 1.5)" in texts
    assert "normalized: slope 0.00 (theory 0)" in texts
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


def test_report_data_line_says_every_value_shows_when_none_is_left_out():
    # "0 underflowed to 0 and 0 are inf/NaN; log scales cannot show them, so ..."
    df = pd.DataFrame({"job": ["a"] * 3, "seed": [0, 1, 1], "grad_norm": [1.0, 0.5, 2.0]})
    line = report.data_line(df, pd.DataFrame({"job": ["a"]}))
    assert line == ("1 finished job(s), 2 seed(s) per job, 3 grad_norm values (every seed, t "
                    "and logged training step): every one finite and above 0, so the "
                    "log-scale figures show them all.")
    line = report.data_line(df.assign(grad_norm=[0.0, np.inf, 1.0]), pd.DataFrame({"job": ["a"]}))
    assert "1 underflowed to 0 and 1 are inf/NaN; log scales cannot show them" in line


def test_modern_cells_draws_init_trained_and_baselines(sweep, probed):
    """fig10's figure: the probed jobs at initialization (relative to t = T, predictions dashed
    where they apply), the trained job before and after, its validation loss beside the
    memoryless baseline (selective_copy's from its task.tokens and task.symbols)."""
    df, summaries = load_sweep(sweep), load_summaries(sweep)
    metrics = load_metrics(sweep)
    fig = plots.modern_cells(df, summaries, metrics)
    init_ax, after_ax, loss_ax, acc_ax = fig.axes
    solid = [line for line in init_ax.get_lines() if line.get_linestyle() == "-"]
    assert len(solid) == len(PROBED)
    for line in solid:
        x, y = line.get_xdata(), line.get_ydata()
        assert y[np.argmin(x)] == pytest.approx(0, abs=1e-12)
    applies = frames.predictions(summaries[summaries["job"].isin(PROBED)])["applies"]
    assert len([ln for ln in init_ax.get_lines() if ln.get_linestyle() == "--"]) == applies.sum()
    assert after_ax.get_title().endswith("after 20 steps")
    assert [line.get_ydata()[0] for line in loss_ax.get_lines()
            if line.get_linestyle() == ":"] == [pytest.approx(1 / 6)]
    selective = metrics.assign(task="selective_copy", T=18, loss_at="all", task_tokens=2,
                               task_symbols=4)
    fig = plots.modern_cells(df, summaries, selective)
    assert [line.get_ydata()[0] for line in fig.axes[2].get_lines()
            if line.get_linestyle() == ":"] == [pytest.approx(2 * math.log(4) / 18)]
