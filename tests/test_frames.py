"""The tables behind the figures (rnnjax.report.frames), on small frames built here: config columns,
labels, job order, quantiles over seeds, which prediction applies, slope tables, baselines
checked against the tasks themselves, the fall of a profile and the curse-of-memory power laws."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from rnnjax.core.losses import make_loss
from rnnjax.core.tasks import COPY_VOCAB, make_adding_batch, make_copy_batch
from rnnjax.report import frames


def summaries(rows: list[dict]) -> pd.DataFrame:
    """A load_summaries-like frame: config under config.*, theory under headline.theory.*."""
    out = []
    for i, r in enumerate(rows):
        cfg = {"cell.name": "vanilla", "activation.name": "tanh", "init.name": "gaussian",
               "init.gain": 1.0, "probe.loss_at": "last", "task.name": "random",
               "seq_len": 16, "train.clip": None} | r.get("config", {})
        out.append({"job": str(i), "T": r.get("T", cfg["seq_len"]), "status": "ok",
                    **{"config." + k: v for k, v in cfg.items()},
                    **{frames.THEORY + k: v for k, v in r.get("theory", {}).items()},
                    frames.SLOPE: r.get("slope", -0.1), "headline.n_underflow": 0})
    return pd.DataFrame(out)


def test_job_order_is_natural():
    assert frames.job_order(["10", "2", "g=1.5", "g=1.25", "2"]) == ["2", "10", "g=1.25",
                                                                    "g=1.5"]


def test_config_frame_finds_each_key_under_any_of_its_names():
    df = pd.DataFrame({"init_gain": [2.0], "train.lr": [0.1], "train_clip": [1.0],
                       "config.cell.forget_bias": [1.0], "T": [120], "config.seq_len": [100]})
    cfg = frames.config_frame(df)
    assert cfg.iloc[0].to_dict() == {"init_gain": 2.0, "cell_label": "forget_bias=1", "T": 120,
                                     "seq_len": 100, "lr": 0.1, "clip": 1.0}
    # the job's own text of its options, where it wrote one, over the generic one
    own = frames.config_frame(df.assign(cell_label="forget bias 1", model_label="lstm"))
    assert own.iloc[0]["cell_label"] == "forget bias 1" and own.iloc[0]["model_label"] == "lstm"


def test_labels_name_each_cell_by_what_it_uses():
    # What the jobs wrote (summary.json): how the cell's options read, what the network is in
    # one word, and whether the cell takes the config's activation and init.
    cfg = frames.config_frame(pd.DataFrame({
        "cell": ["vanilla", "lstm", "lstm", "urnn", "lru", "lru"],
        "activation": ["relu", "tanh", "tanh", "tanh", "tanh", "tanh"],
        "init": ["identity", "normal", "normal", "normal", "normal", "normal"],
        "init_std": [None, 0.01, 0.01, 0.01, 0.01, 0.01],
        "init_gain": [1.0, None, None, None, None, None],
        "cell_label": ["", "forget bias 1", "", "", "|λ| in [0.9, 0.999]", "r=0.5"],
        "model_label": ["relu", "lstm", "lstm", "urnn", "lru", "lru"],
        "cell_takes_activation": [True, False, False, False, False, False],
        "cell_takes_init": [True, True, True, False, False, False],
        "T": [120] * 6, "seq_len": [100] * 6,
    }))
    assert frames.labels(cfg).tolist() == [
        "vanilla / relu / identity g=1",
        "lstm / normal std=0.01 / forget bias 1",  # activation: the cell ignores it
        "lstm / normal std=0.01",  # its defaults: no text
        "urnn",  # neither activation nor init
        "lru / |λ| in [0.9, 0.999]",
        "lru / r=0.5",
    ]  # T is the same for all: not named; seq_len never (T is)
    assert frames.model(cfg).tolist() == ["relu", "lstm", "lstm", "urnn", "lru", "lru"]
    # one cell alone: named where its name is what the network is, not beside its activation
    lstm = cfg[cfg["cell"] == "lstm"]
    assert frames.labels(lstm).tolist() == ["lstm / normal std=0.01 / forget bias 1",
                                            "lstm / normal std=0.01"]
    assert frames.labels(cfg[cfg["cell"] == "vanilla"]).tolist() == ["relu / identity g=1"]


def test_labels_of_results_written_before_the_jobs_said_how_their_cell_reads():
    """Jobs of different cells concatenate into nullable columns (pandas' NA where a cell has
    no such option): a gap is a missing value, not an error; with no `cell_label` the options
    read "key=value" and the network is named by its cell."""
    df = pd.DataFrame({
        "cell": ["vanilla", "lstm", "lstm"], "activation": ["tanh"] * 3,
        "cell_forget_bias": pd.array([None, 1.0, 0.0], dtype="Float64"),
        "cell_peephole": pd.array([None, True, False], dtype="boolean"),
        "cell_r_min": [math.nan] * 3, "cell_r_max": [math.nan] * 3,  # no LRU among them
    })
    cfg = frames.config_frame(df)
    assert frames.labels(cfg).tolist() == [
        "vanilla / tanh", "lstm / tanh / forget_bias=1, peephole=True",
        "lstm / tanh / forget_bias=0, peephole=False"]
    assert frames.model(cfg).tolist() == ["vanilla", "lstm", "lstm"]
    assert frames.model(cfg.drop(columns="cell")).tolist() == ["tanh"] * 3


def test_labels_keep_the_old_vanilla_form_and_exclude_init_with_its_parameter():
    cfg = pd.DataFrame({"activation": ["tanh", "tanh"], "init": ["gaussian", "orthogonal"],
                        "init_gain": [2.0, 2.0], "T": [16, 64]})
    assert frames.labels(cfg).tolist() == ["tanh / gaussian g=2 / T=16",
                                           "tanh / orthogonal g=2 / T=64"]
    assert frames.labels(cfg, exclude=("init",)).tolist() == ["tanh / T=16", "tanh / T=64"]


def test_config_label_appends_the_job_where_labels_coincide():
    df = pd.DataFrame({"job": ["a", "b", "c"], "activation": ["tanh"] * 3,
                       "init": ["xavier"] * 3, "T": [8, 8, 9]})
    assert frames.config_label(df).tolist() == ["tanh / xavier / T=8 (job a)",
                                                "tanh / xavier / T=8 (job b)",
                                                "tanh / xavier / T=9"]


def test_quartiles_over_seeds_count_underflow_and_overflow():
    norms = {1: [0.0, 1e-3, 1e-2], 2: [0.0, 0.0, 1.0], 3: [1.0, np.inf, np.inf],
             4: [np.nan, 1e-2, 1e-4], 5: [1e-3, 1e-2, 1e-1]}
    df = pd.DataFrame([{"job": "a", "t": t, "seed": s, "grad_norm": g}
                       for t, gs in norms.items() for s, g in enumerate(gs)])
    stats = frames.profile_stats(df).set_index("t")
    assert stats["median"].tolist() == [-3.0, -np.inf, np.inf, -3.0, -2.0]
    assert stats.loc[1, "q25"] == -np.inf and stats.loc[1, "q75"] == pytest.approx(-2.5)
    assert stats.loc[5, "q25"] == pytest.approx(-2.5) and stats.loc[5, "q75"] == pytest.approx(-1.5)
    deciles = frames.profile_stats(df, quantiles=(0.1, 0.9)).set_index("t")
    assert deciles.loc[5, "q10"] == pytest.approx(-2.8) and deciles.loc[5, "q90"] == pytest.approx(
        -1.2)
    note = frames.dropped_note(stats)
    assert "of 5" in note and "1 underflowed to 0" in note and "1 overflowed" in note


def test_jobs_table_orders_cells_then_activations_then_config():
    df = pd.DataFrame({"job": ["1", "2", "3", "4", "5"],
                       "cell": ["lru", "vanilla", "gru", "vanilla", "vanilla"],
                       "activation": ["tanh", "sigmoid", "tanh", "tanh", "tanh"],
                       "init": ["normal"] * 5, "T": [8, 8, 8, 16, 8],
                       # where the jobs said their cell and activation stand
                       "cell_order": [50.0, 0.0, 10.0, 0.0, 0.0],
                       "activation_order": [0, 1, 0, 0, 0]})
    jobs = frames.jobs_table(df)
    assert jobs["job"].tolist() == ["5", "4", "2", "3", "1"]  # tanh T=8, T=16, sigmoid, gru, lru
    # results written before the jobs said: by name
    old = frames.jobs_table(df.drop(columns=["cell_order", "activation_order"]))
    assert old["job"].tolist() == ["3", "1", "2", "5", "4"]  # gru, lru, vanilla; sigmoid, tanh


def test_a_prediction_applies_to_one_loss_term_only_and_never_to_the_identity():
    s = summaries([
        {"theory": {"mean_field.log10_factor_per_step": -0.5}},
        {"theory": {"mean_field.log10_factor_per_step": -0.5},
         "config": {"probe.loss_at": "all"}},
        {"theory": {"mean_field.log10_factor_per_step": -0.15},
         "config": {"activation.name": "relu", "init.name": "identity"}},
        {"theory": {"predicted_log10_slope_per_step_back": -0.3,
                    "prediction": "log10 mean forget gate F"}, "config": {"cell.name": "lstm"}},
        {"theory": {"predicted_log10_slope_per_step_back": -0.3, "applies": False},
         "config": {"cell.name": "lstm"}},
        {"theory": {}, "config": {"cell.name": "lstm"}},  # large weights: no prediction
    ])
    pred = frames.predictions(s)
    assert pred["applies"].tolist() == [True, False, False, True, False, False]
    assert pred.loc["0", "slope"] == -0.5 and pred.loc["0", "name"] == "mean field"
    assert pred.loc["3", "slope"] == -0.3 and pred.loc["3", "name"] == "log10 mean forget gate F"
    assert pred.loc[~pred["applies"], "slope"].isna().all()


def test_slope_table_relative_error_and_missing_values():
    s = summaries([
        {"slope": -0.55, "theory": {"mean_field.log10_factor_per_step": -0.5,
                                    "pascanu_log10_bound_per_step": 0.1,
                                    "lyapunov_top_log10_per_step": -0.52}},
        {"slope": 0.0, "theory": {"mean_field.log10_factor_per_step": -0.5},
         "config": {"probe.loss_at": "all"}},
    ])
    table = frames.slope_table(s)
    assert table["relative error"].iloc[0] == pytest.approx(0.1)
    assert table["prediction"].tolist() == ["mean field", "none (loss at all steps)"]
    text = frames.markdown_table(table)
    row = text.splitlines()[3].split(" | ")
    assert row[3:6] == ["none (loss at all steps)", "—", "—"]
    assert "n/a" not in text


def test_slope_table_leaves_the_relative_error_empty_near_a_zero_prediction():
    # A linear network at g = 1 (fig3): measured 0.003058, predicted -6.397e-05, "relative
    # error 48.81" where both are below 0.01 decades per step.
    s = summaries([
        {"slope": 0.003058, "theory": {"mean_field.log10_factor_per_step": -6.397e-05},
         "config": {"activation.name": "linear"}},
        {"slope": -0.55, "theory": {"mean_field.log10_factor_per_step": -0.5}},
        {"slope": -0.011, "theory": {"mean_field.log10_factor_per_step": -0.01}},
        {"slope": -0.011, "theory": {"mean_field.log10_factor_per_step": -0.0099}},
        {"slope": 0.0, "config": {"probe.loss_at": "all"},
         "theory": {"mean_field.log10_factor_per_step": -0.5}},
    ])
    table = frames.slope_table(s).set_index("job")
    diff = table["absolute difference (log10/step)"]
    np.testing.assert_allclose(diff.iloc[:4], [0.003058 + 6.397e-05, 0.05, 0.001, 0.0011],
                               rtol=1e-12)
    assert np.isnan(diff["4"])  # no prediction applies: no difference either
    rel = table["relative error"]
    assert rel["1"] == pytest.approx(0.1) and rel["2"] == pytest.approx(0.1)  # at the threshold
    assert rel[["0", "3", "4"]].isna().all()
    columns = list(table.reset_index().columns)  # beside the prediction; old names kept
    assert columns[4:7] == ["predicted (log10/step)", "absolute difference (log10/step)",
                            "relative error"]
    row = frames.markdown_table(table.reset_index()).splitlines()[2].split(" | ")
    assert row[4:7] == ["-6.397e-05", "0.003122", "—"]


def test_memoryless_baselines_are_the_tasks_own():
    key = jax.random.key(0)

    # Each side in one compiled program (eager, every operation compiled its own).
    @jax.jit
    def adding_mse(key):
        _, y = make_adding_batch(50_000, 20)(key)
        return make_loss("regression", "last")(jnp.ones((20, 50_000, 1)), y)

    @jax.jit
    def copy_ce(key):
        x, y = make_copy_batch(16, 100)(key)
        T = x.shape[1]
        blank = jax.nn.one_hot(0, COPY_VOCAB) * 100.0  # certain of the blank
        uniform = jnp.where((jnp.arange(COPY_VOCAB) >= 1) & (jnp.arange(COPY_VOCAB) <= 8), 0.0,
                            -jnp.inf)
        logits = jnp.where((jnp.arange(T) >= T - 10)[:, None, None], uniform, blank)
        logits = jnp.broadcast_to(logits, (T, 16, COPY_VOCAB))
        return {loss_at: make_loss("tokens", loss_at)(logits, y) for loss_at in ("all", "last")}

    # adding: always predicting 1 (5·10^4 sequences: the mean is within 6 sigma of 1/6)
    mse = adding_mse(key)
    assert float(mse) == pytest.approx(frames.memoryless_baseline("adding", 20), abs=5e-3)
    # copy: blank where a blank is due, else uniform over the 8 symbols; T = seq_len + 20
    ce = copy_ce(key)
    T = jax.eval_shape(make_copy_batch(16, 100), key)[0].shape[1]
    for loss_at in ("all", "last"):
        assert float(ce[loss_at]) == pytest.approx(frames.memoryless_baseline("copy", T, loss_at),
                                                   rel=1e-6)
    assert frames.memoryless_baseline("copy", 120) == pytest.approx(10 * math.log(8) / 120)
    assert frames.memoryless_baseline("random", 64) is None


def test_fall_per_seed_from_t_equal_T_back_to_1():
    T = 5
    df = pd.DataFrame([{"job": "a", "train_step": 0, "seed": s, "t": t,
                        "grad_norm": g ** (T - t)} for s, g in enumerate((0.1, 1e-3, 0.0))
                       for t in range(1, T + 1)])
    df.loc[(df["seed"] == 2) & (df["t"] == T), "grad_norm"] = 1.0  # 0 ** 0
    fall = frames.fall_per_seed(df).set_index("seed")["fall"]
    assert fall.tolist() == [pytest.approx(4.0), pytest.approx(12.0), np.inf]


def test_power_law_slopes_recover_exact_powers():
    r = np.array([0.5, 0.9, 0.99, 0.999])
    m = 1 / (1 - r)
    rows = [{"r": v, "memory": mm, "normalize": n, "job": f"{v}{n}",
             "lambda_grad_norm": 3 * mm ** (1.0 if n else 1.5),
             "nu_log_grad_norm": 0.03 * mm ** (0.0 if n else 0.5)}
            for v, mm in zip(r, m, strict=True) for n in (True, False)]
    s = pd.DataFrame([{"job": x["job"], frames.THEORY + "r": x["r"],
                       frames.THEORY + "inverse_one_minus_r": x["memory"],
                       "config.cell.normalize": x["normalize"],
                       frames.THEORY + "lambda_grad_norm": x["lambda_grad_norm"],
                       frames.THEORY + "nu_log_grad_norm": x["nu_log_grad_norm"]}
                      for x in rows])
    curse = frames.curse_of_memory(s)
    assert curse["memory"].tolist() == sorted(m.tolist()) * 2
    slopes = frames.power_law_slopes(curse).set_index(["quantity", "normalize"])
    np.testing.assert_allclose(slopes["measured"], slopes["predicted"], atol=1e-9)
    assert (slopes["points"] == 3).all()  # 1/(1 - r) >= 10: r = 0.9, 0.99, 0.999


def test_dropped_note_names_the_line_its_medians_belong_to():
    # fig4 said "Not plotted: of 1000 IRNN at step 100: (t) medians over seeds, ...".
    stats = pd.DataFrame({"median": [0.0, -np.inf, np.inf, np.nan]})
    assert frames.dropped_note(stats, "timestep", of="IRNN after 100 training steps") == (
        "Not plotted (IRNN after 100 training steps): of 4 timestep medians over seeds, "
        "1 underflowed to 0 (log10 = −∞) and 2 overflowed to inf or are NaN.")
    assert frames.dropped_note(stats) == (
        "Not plotted: of 4 (configuration, t) medians over seeds, 1 underflowed to 0 "
        "(log10 = −∞) and 2 overflowed to inf or are NaN.")
    assert frames.dropped_note(stats.iloc[:1]) == ""


def test_the_report_names_no_cell_in_its_code():
    """Labels, options and order come from the files the jobs wrote: no report module spells a
    built-in cell's name in its code (docstrings and data files may)."""
    import ast
    from pathlib import Path

    import rnnjax.report

    names = {"vanilla", "gru", "lstm", "urnn", "lru"}
    found = []
    for path in Path(rnnjax.report.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if text and id(node) not in docs:
                words = set(re.findall(r"[a-z]+", node.value.lower()))
                found += [f"{path.name}:{node.lineno}: {w}" for w in words & names]
            if isinstance(node, ast.Name) and node.id.lower() in names:
                found.append(f"{path.name}:{node.lineno}: {node.id}")
    assert not found
