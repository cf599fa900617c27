"""rnnjax.bench.scan's logic beyond what `rnnjax bench --quick` runs (one cell's probe at one
T): which cells it measures, its repeats, the agreement of two training steps, and its tables
and verdict from a record with skipped rows and both programs. No compilation."""

import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.bench import scan as bench_scan
from rnnjax.core.probes import ProbeResult


def test_the_cells_are_those_with_a_linear_form():
    cells = bench_scan.linear_cells()
    assert {"lru", "mingru", "minlstm", "s6"} <= set(cells)
    assert not {"vanilla", "gru", "lstm", "custom", "flax", "equinox"} & set(cells)


def test_fewer_repeats_for_long_or_large_trajectories():
    assert bench_scan.repeats_at(1024, 2**20, 5) == 5
    assert bench_scan.repeats_at(4096, 2**20, 5) == 3
    assert bench_scan.repeats_at(16384, 2**20, 5) == 2
    assert bench_scan.repeats_at(1024, 300 * 2**20, 5) == 2  # S6's trajectory at T = 1024
    assert bench_scan.repeats_at(16384, 2**20, 1) == 1


def test_agreement_of_the_probes_and_of_two_training_steps():
    def probe(log10):
        return ProbeResult(0.0, jnp.asarray(log10), None, None, None, {})

    # below GRAD_FLOOR a norm that flushed to 0 (-inf) by one scan is not compared
    agree = bench_scan.probe_agreement(probe([-40.0, -2.0, 0.0]),
                                       probe([-np.inf, np.log10(1.01e-2), 0.0]))
    assert agree["steps_compared"] == 2 and agree["max_rel_diff"] == pytest.approx(0.01)
    seq = (jnp.asarray(2.0), {"a": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([4.0])})
    par = (jnp.asarray(2.2), {"a": jnp.asarray([3.0, 0.5]), "b": jnp.asarray([4.0])})
    agree = bench_scan.train_agreement(seq, par)
    assert agree["loss_rel_diff"] == pytest.approx(0.1)
    assert agree["max_rel_diff"] == pytest.approx(0.5 / 5.0)


def timed(seq_ms, par_ms):
    part = {s: {"run_s_median": ms / 1e3, "compile_s": 1.0, "xla_estimate_bytes": 4 * 2**20}
            for s, ms in (("sequential", seq_ms), ("parallel", par_ms))}
    return part | {"ratio_sequential_to_parallel": seq_ms / par_ms, "max_rel_diff": 1e-6}


def test_tables_and_verdict_with_a_skipped_row():
    rows = [{"cell": "lru", "T": 1024, "trajectory_bytes": 2**20,
             "probe": timed(40, 120), "train": timed(50, 25)},
            {"cell": "s6", "T": 1024, "trajectory_bytes": 2**30, "skipped": "too big"}]
    record = {"config": {"B": 32, "H": 64, "vocab": 28, "dtype": "float32", "loss_at": "last",
                         "repeats": 5, "max_trajectory_mib": 512, "grad_floor": 1e-30,
                         "programs": ["probe", "train"]},
              "results": rows, "verdict": bench_scan.verdict(rows)}
    assert record["verdict"] == {"lru": {"probe": {"parallel": [], "sequential": [1024]},
                                         "train": {"parallel": [1024], "sequential": []}}}
    text = bench_scan.scan_report(record)
    assert "| 1024 | 40.0 (1.0 s) | 120.0 (1.0 s) | 0.33x | skipped |  |  | 1.0e-06 |" in text
    assert "| 1024 | 50.0 (1.0 s) | 25.0 (1.0 s) | **2.00x** | skipped |" in text
    assert "| 1024 | 1.00 MiB; 4.0x / 4.0x | 1.00 GiB; skipped |" in text
    assert "- lru: faster probe: sequential at T = 1024 | train: parallel at T = 1024" in text
    assert "is SLOWER than sequential at 1 of the 2 measured points" in text
    assert bench_scan.scan_report({"skipped": "--skip-scan"}).endswith("skipped (--skip-scan)")
