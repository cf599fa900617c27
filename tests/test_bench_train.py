"""experiments/bench_train.py (rnnjax.bench.train): the rnnjax contender end to end on one
epoch, and the speed ratios and table from rows whose numbers are known."""

import importlib.util
import json
import math
import re

import pytest
from conftest import ROOT

from rnnjax.bench import train as bench_train


def rows(**process_s):
    """Rows as median_row makes them, one run each."""
    names = {"scratch": (bench_train.TORCH_MODELS["scratch"], 1, 1),
             "rnn": (bench_train.TORCH_MODELS["rnn"], 2, 1),
             "compiled": (bench_train.TORCH_MODELS["compiled"], 1, 1),
             "rnnjax1": ("rnnjax", None, 1), "rnnjax3": ("rnnjax", None, 3)}
    return [bench_train.median_row([bench_train.row(names[k][0], names[k][2], names[k][1], s,
                                                    s - 1, 6.2, 7.3)])
            for k, s in process_s.items()]


def test_ratios_take_the_fastest_eager_pytorch_times_the_seeds():
    r = bench_train.ratios(rows(scratch=22.0, rnn=20.0, compiled=5.0, rnnjax1=10.0,
                                rnnjax3=30.0))
    assert r["fastest_pytorch_eager"] == "PyTorch nn.RNN, 2 thread(s)"  # compiled is not eager
    assert r["pytorch_eager_x1_over_rnnjax_1_seeds"] == pytest.approx(2.0)
    assert r["pytorch_eager_x3_over_rnnjax_3_seeds"] == pytest.approx(2.0)
    assert bench_train.ratios(rows(rnnjax1=10.0)) == {}  # --skip-torch: no ratio


def test_table_gives_time_per_seed_against_rnnjax_one_seed():
    text = bench_train.table(rows(scratch=22.0, rnnjax1=10.0, rnnjax3=24.0))
    lines = text.splitlines()
    assert len(lines) == 5 and lines[1].startswith("|---|---:|")
    assert lines[2].endswith("| 2.20x per seed |")
    assert lines[3].endswith("| 1.00x per seed |")
    assert lines[4].endswith("| 0.80x per seed |")


@pytest.mark.e2e
@pytest.mark.slow
def test_rnnjax_contender_trains_one_epoch(tmp_path, timemachine_file, capsys):
    out = tmp_path / "bench_train.json"
    bench_train.main(["--skip-torch", "--epochs", "1", "--rnnjax-seeds", "1",
                      "--data", str(timemachine_file), "--out", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["name"] == "rnnjax" and row["seeds"] == 1 and result["epochs"] == 1
    assert 0 < row["job_s"] < row["process_s"]
    # one epoch of d2l's model moves the perplexity off the vocabulary's 28 but not far
    assert 10 < row["train_ppl"] < 28 and math.isfinite(row["val_ppl"])
    assert result["ratios"] == {}
    assert "| rnnjax | - | 1 |" in capsys.readouterr().out


def test_missing_text_is_a_usage_error_not_a_traceback(monkeypatch, capsys):
    # Offline and without the text, bench-train raised DataError with a traceback.
    import rnnjax.core.tasks

    def nowhere(path):
        raise rnnjax.core.tasks.DataError("task=timemachine: cannot download it; put it in X")

    monkeypatch.setattr(rnnjax.core.tasks, "timemachine_path", nowhere)
    with pytest.raises(SystemExit) as e:
        bench_train.parse_args([])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: task=timemachine: cannot download it; put it in X; or pass --data")
    with pytest.raises(SystemExit):  # a bad number is named first
        bench_train.parse_args(["--epochs", "0"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: --epochs must be >= 1")


# ---------------------------------------------------------------- where the results go

def text_file(tmp_path):
    """A stand-in for The Time Machine: parse_args checks only that the file is there."""
    path = tmp_path / "timemachine.txt"
    path.write_text("the time traveller")
    return path


def test_default_out_is_under_runs_never_the_reference(tmp_path):
    # Every run, a one-epoch smoke test included, replaced the committed
    # results/bench_train.json; only `--out results/bench_train.json` may.
    args = bench_train.parse_args(["--data", str(text_file(tmp_path))])
    assert re.fullmatch(r"results/runs/bench_train/\d{8}-\d{6}\.json", str(args.out))
    out = tmp_path / "mine.json"
    assert bench_train.parse_args(["--data", str(tmp_path), "--out", str(out)]).out == out


def test_an_out_that_cannot_be_written_is_one_line_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_train.parse_args(["--data", str(text_file(tmp_path)), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.endswith(f"error: --out {tmp_path}: is a directory, not a file\n")


@pytest.fixture
def d2l_cells_check(monkeypatch):
    """experiments/d2l_cells_check.py as a module, with a stand-in for PyTorch (parse_args
    only asks whether it is installed)."""
    spec = importlib.util.spec_from_file_location(
        "d2l_cells_check", ROOT / "experiments" / "d2l_cells_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "torch", object())
    return module


def test_d2l_cells_check_writes_under_runs_never_the_reference(d2l_cells_check, tmp_path,
                                                                capsys):
    # Its default was the committed results/d2l_cells_check.json (a float64 run replaced the
    # float32 reference too).
    runs = ROOT / "results" / "runs" / "d2l_cells_check"
    for dtype in ("float32", "float64"):
        args = d2l_cells_check.parse_args(["--data", str(text_file(tmp_path)), "--dtype", dtype])
        assert args.out.parent == runs
        assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{dtype}\.json", args.out.name)
    with pytest.raises(SystemExit) as e:
        d2l_cells_check.parse_args(["--data", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.endswith(f"error: --out {tmp_path}: is a directory, not a file\n")
