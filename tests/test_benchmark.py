"""rnnjax.bench.common: the helpers both benchmarks share."""

import json

from rnnjax.bench import common as benchmark


def test_interleaved_takes_the_contenders_in_turns():
    calls = []
    times = benchmark.interleaved({"a": lambda: calls.append("a"),
                                   "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    s = benchmark.summary([3.0, 1.0, 2.0])
    assert (s["run_s_median"], s["run_s_min"], s["run_s_max"]) == (2.0, 1.0, 3.0)


def test_markdown_table_and_sizes():
    assert benchmark.markdown_table(["T", "ms"], [[16, "1.8"]], [False, True]) == (
        "| T | ms |\n|---|---:|\n| 16 | 1.8 |")
    assert [benchmark.size(n) for n in (512, 1536, 3 * 2**20, 5 * 2**40)] == [
        "512 B", "1.50 KiB", "3.00 MiB", "5120.00 GiB"]


def test_busy_warning_above_half_the_cores():
    assert benchmark.busy_warning([0.5, 1.0], cpus=2) is None
    line = benchmark.busy_warning([0.5, 1.2], cpus=2)
    assert line.startswith("WARNING: load average up to 1.20 on 2 CPUs")


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.json"
    benchmark.write_json({"a": 1}, path)
    benchmark.write_json({"b": [1, 2]}, path)
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left
    assert benchmark.last_json_line('log\n{"x": 2}\n') == {"x": 2}
