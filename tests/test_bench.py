"""experiments/bench.py end to end in --quick mode, through a subprocess as a user runs it: the
JSON's structure and the agreement of the implementations (never timings), marked slow (left
out of the default run: the benchmark is run on purpose, `-m slow` checks it); where it
writes, in-process."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "experiments" / "bench.py"
TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One quick run without --out (PyTorch included when it is installed), in a directory of
    its own: (that directory, the files it wrote there, relative to it)."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env |= {"JAX_COMPILATION_CACHE_DIR": str(tmp / "jax"), "XDG_CACHE_HOME": str(tmp / "cache")}
    (tmp / "cwd").mkdir()
    p = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=tmp / "cwd",
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| T | rnnjax compile s |" in p.stdout  # the markdown tables
    assert "| T | unroll 1: ms (compile) |" in p.stdout
    written = sorted(str(f.relative_to(tmp / "cwd")) for f in (tmp / "cwd").rglob("*")
                     if f.is_file())
    assert p.stdout.rstrip().endswith(f"wrote {written[-1]}")
    return tmp / "cwd", written


@pytest.fixture(scope="module")
def bench(bench_run):
    """The JSON of the quick run."""
    where, written = bench_run
    return json.loads((where / written[-1]).read_text())


@pytest.mark.slow
@pytest.mark.e2e
def test_a_quick_run_writes_under_runs_never_the_reference(bench_run):
    # `rnnjax bench --quick` replaced the committed results/bench.json with smoke-test numbers.
    _, written = bench_run
    assert len(written) == 1, written
    assert re.fullmatch(r"results/runs/bench/\d{8}-\d{6}-quick\.json", written[0]), written


def test_a_quick_run_does_not_replace_a_full_runs_results(tmp_path, capsys):
    from rnnjax.bench import probe as bench

    reference = tmp_path / "bench.json"
    reference.write_text(json.dumps({"config": {"quick": False}, "results": ["full"]}))
    before = reference.read_bytes()
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--quick", "--out", str(reference)])
    assert e.value.code == 2 and reference.read_bytes() == before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f": error: --out {reference} holds a full run's" in err
    # a former quick run's file, or a new one, may be written
    reference.write_text(json.dumps({"config": {"quick": True}}))
    assert bench.parse_args(["--quick", "--out", str(reference)]).out == reference
    assert bench.parse_args(["--out", str(reference)]).out == reference  # a full run may


@pytest.mark.parametrize("where", ["a folder", "inside a file", "read-only"])
def test_an_out_that_cannot_be_written_is_one_line_before_measuring(where, tmp_path, capsys,
                                                                     monkeypatch):
    # --out naming a folder ran the whole benchmark, then ended in an IsADirectoryError
    # traceback when writing.
    from rnnjax.bench import probe as bench

    (tmp_path / "file").write_text("")
    folder = tmp_path / "ro"
    folder.mkdir()
    out = {"a folder": tmp_path, "inside a file": tmp_path / "file" / "bench.json",
           "read-only": folder / "bench.json"}[where]
    says = {"a folder": "is a directory, not a file",
            "inside a file": f"{tmp_path / 'file'} is a file, not a directory",
            "read-only": f"cannot write in {folder} (Permission denied)"}[where]
    if where == "read-only":
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):  # root writes anyway: the refusal is faked
            import rnnjax.app.results

            def refused(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(rnnjax.app.results.tempfile, "TemporaryFile", refused)
    try:
        with pytest.raises(SystemExit) as e:
            bench.parse_args(["--quick", "--out", str(out)])
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.endswith(f"--out {out}: {says}\n")
    assert list(folder.iterdir()) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_every_implementation_is_timed_and_agrees(bench):
    rows = bench["results"]
    cfg = bench["config"]
    assert [r["T"] for r in rows] == cfg["T"]
    for row in rows:
        assert row["flops"] == 6 * row["T"] * cfg["B"] * cfg["H"] * (cfg["H"] + cfg["vocab"])
        assert row["rnnjax"]["unroll"] == cfg["unroll"] >= 1
        for impl in ("rnnjax", "jax_loop") + (("pytorch_eager",) if TORCH else ()):
            r = row[impl]
            assert len(r["run_s"]) == row["repeats"]
            assert r["run_s_min"] <= r["run_s_median"] <= r["run_s_max"]
            assert r["gflops"] > 0 and r["fraction_of_matmul_rate"] > 0
            if impl != "pytorch_eager":
                assert r["compile_s"] > 0
            if impl != "rnnjax":
                assert r["max_rel_diff"] < 1e-3, (impl, row["T"], r["max_rel_diff"])
                assert r["ratio_to_rnnjax"] == pytest.approx(
                    r["run_s_median"] / row["rnnjax"]["run_s_median"])
    assert bench["matmul"]["reference_gflops"] == max(bench["matmul"][k]["jax_gflops"]
                                                      for k in ("start", "end"))


@pytest.mark.slow
@pytest.mark.e2e
def test_every_unroll_is_timed_and_agrees(bench):
    cfg = bench["config"]
    assert {(u["T"], u["unroll"]) for u in bench["unrolls"]} == {  # --quick: the longest T
        (cfg["T"][-1], u) for u in cfg["unrolls"]}
    for u in bench["unrolls"]:
        assert u["compile_s"] > 0 and u["run_s_median"] > 0
        assert u["max_rel_diff"] < 1e-5  # unrolling changes the schedule, not the arithmetic
    assert set(bench["compile_growth_by_unroll"]) == {str(u) for u in cfg["unrolls"]}


@pytest.mark.slow
def test_the_scan_section_times_both_scans_and_they_agree(bench):
    (row,) = bench["scan"]["results"]  # --quick: the first linear cell's probe at T = 16
    assert row["probe"]["max_rel_diff"] < 1e-4


@pytest.mark.slow
def test_memory_is_measured_for_both_losses(bench):
    cfg = bench["config"]
    assert {(m["T"], m["loss_at"]) for m in bench["memory"]} == {
        (cfg["T"][-1], "all"), (cfg["T"][-1], "last")}
    for m in bench["memory"]:
        S, T = m["seeds"], m["T"]
        assert S == cfg["mem_seeds"]
        assert m["trajectory_bytes"] == S * T * cfg["B"] * cfg["H"] * 4
        assert m["xla_estimate"]["argument_size_in_bytes"] > 0
        assert m["xla_estimate_multiple"] == pytest.approx(
            m["xla_estimate"]["total_bytes"] / m["trajectory_bytes"])
        assert m["measured"]["increase_bytes"] >= 0
        assert m["measured_multiple"] == pytest.approx(
            m["measured"]["increase_bytes"] / m["trajectory_bytes"])


@pytest.mark.slow
def test_sweep_and_machine(bench):
    sweep = bench["sweep"]
    assert sweep["network_steps_per_s"] == pytest.approx(
        sweep["seeds"] * sweep["T"] / sweep["run_s_median"])
    machine = bench["machine"]
    assert machine["cpu_count"] >= 1 and len(machine["load_average_at_start"]) == 3
    assert machine["jax_platform"] in ("cpu", "gpu") and machine["device_kind"]
    assert len(bench["load_average_1min_during"]) >= 2


@pytest.mark.slow
def test_torch_column(bench):
    pytest.importorskip("torch")
    assert bench["machine"]["torch"] is not None
    assert bench["matmul"]["start"]["torch_gflops"] > 0
    assert all(r["pytorch_eager"]["threads"] >= 1 for r in bench["results"])
