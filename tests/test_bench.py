"""experiments/bench.py end to end in --quick mode, through a subprocess as a user runs it."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "experiments" / "bench.py"
TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The JSON of one quick run (PyTorch included when it is installed)."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env |= {"JAX_COMPILATION_CACHE_DIR": str(tmp / "jax"), "XDG_CACHE_HOME": str(tmp / "cache")}
    out = tmp / "bench.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| T |" in p.stdout  # the markdown table
    return json.loads(out.read_text())


def test_every_implementation_is_timed_and_agrees(bench):
    rows = bench["results"]
    assert [r["T"] for r in rows] == bench["config"]["T"]
    for row in rows:
        assert row["flops"] == 6 * row["T"] * bench["config"]["B"] * bench["config"]["H"] * (
            bench["config"]["H"] + bench["config"]["vocab"])
        for impl in ("rnnjax", "jax_loop") + (("pytorch_eager",) if TORCH else ()):
            r = row[impl]
            assert r["run_s_median"] > 0 and r["gflops"] > 0, (impl, r)
            assert r["fraction_of_matmul_rate"] > 0
            assert len(r["run_s"]) == row["repeats"]
            if impl != "pytorch_eager":
                assert r["compile_s"] > 0
            if impl != "rnnjax":
                assert r["max_rel_diff"] < 1e-3, (impl, row["T"], r["max_rel_diff"])
                assert r["ratio_to_rnnjax"] > 0
    assert bench["matmul"]["reference_gflops"] == max(bench["matmul"][k]["jax_gflops"]
                                                      for k in ("start", "end"))
    assert bench["compile_growth"]["ratio"] > 0


def test_memory_and_sweep(bench):
    assert [m["T"] for m in bench["memory"]] == bench["config"]["T"]
    for m in bench["memory"]:
        S, T, B, H = m["seeds"], m["T"], bench["config"]["B"], bench["config"]["H"]
        assert m["trajectory_bytes"] == S * T * B * H * 4
        assert m["xla_estimate"]["argument_size_in_bytes"] > 0
        assert m["xla_estimate_multiple"] > 0
        assert m["measured"]["increase_bytes"] >= 0
    sweep = bench["sweep"]
    assert sweep["network_steps_per_s"] == pytest.approx(
        sweep["seeds"] * sweep["T"] / sweep["run_s_median"])


def test_torch_column(bench):
    pytest.importorskip("torch")
    assert bench["machine"]["torch"] is not None
    assert bench["matmul"]["start"]["torch_gflops"] > 0
    assert all(r["pytorch_eager"]["threads"] >= 1 for r in bench["results"])
