"""Fitting seeds into memory: the plan from XLA's estimate and the calibrated factor, the chunked
lax.map path, the retry on RESOURCE_EXHAUSTED, a job's peak under max_memory_gb (measured in a
fresh process), the host-memory check at validation, and the probe's memory as a multiple of
the hidden-state trajectory."""

import functools
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from helpers import compose_cfg

from rnnjax.app import memory
from rnnjax.app.config import register_configs
from rnnjax.app.job import enable_compilation_cache, run_job
from rnnjax.app.memory import (
    balanced_chunk,
    chunk_units,
    compiled_bytes,
    fit_seeds,
    free_bytes,
    is_resource_exhausted,
    memory_budget,
    plan_chunk,
)
from rnnjax.app.validate import ConfigError
from rnnjax.core.cells import vanilla
from rnnjax.core.cells.vanilla import init_params
from rnnjax.core.init import normal
from rnnjax.core.probes import make_probe


@pytest.fixture(autouse=True, scope="module")
def _schema():
    register_configs()  # compose_cfg composes conf/config.yaml, which extends the stored schema


@pytest.fixture(autouse=True, scope="module")
def _compilation_cache(tmp_path_factory):
    """The tests below compile the same programs again and again: cache them (in a tmp dir)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        enable_compilation_cache()
    yield


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def nets(S, B, T, H, V=11, dtype=jnp.float32):
    """S networks and their batches, in one compiled program (eager, every operation of the
    initialization compiled its own)."""
    keys = jax.random.split(jax.random.key(3), S)
    p = jax.vmap(lambda k: init_params(k, normal(0.3), normal(0.3), V, H, V, dtype))(keys)
    x = jax.random.randint(jax.random.key(4), (S, B, T), 0, V)
    return p, x, (x + 1) % V


def test_plan_chunk():
    assert plan_chunk(8, 10, 100, None).chunk == 8  # no limit
    assert plan_chunk(8, 10, 100, 10**6).chunk == 8  # everything fits
    plan = plan_chunk(8, 10, 100, 145)  # room for 4 networks' temporaries
    assert plan.chunk == 4 and plan.peak() == 140 and plan.peak(8) == 180
    # 7 networks, room for 4: chunks of 4 would keep 4 + the remainder 3 live, 3 keep 3 + 1
    assert chunk_units(7, 4) == 7 and chunk_units(7, 3) == 4 and chunk_units(7, 7) == 7
    assert plan_chunk(7, 10, 100, 145).chunk == 3
    assert [balanced_chunk(16, u) for u in (1, 4, 5, 6, 9, 10, 16)] == [1, 4, 4, 5, 8, 8, 16]
    assert plan_chunk(8, 10, 100, 50).chunk == 1  # not even one fits: one at a time


@pytest.fixture
def nothing_in_use(monkeypatch):
    """The chunk arithmetic without the process's resident memory (which moves between calls)."""
    monkeypatch.setattr(memory, "in_use_bytes", lambda device=None: 0)


@pytest.mark.e2e
def test_chunked_seeds_give_the_same_results(caplog, nothing_in_use):
    p, x, y = nets(S=7, B=4, T=30, H=16)
    probe = make_probe(vanilla("tanh"), "all")
    whole = fit_seeds(probe, (0, 0, 0), (p, x, y), None, "probe")
    assert whole.chunk == 7
    plan = whole.plan
    assert plan.per_network > 0 and plan.fixed > 0
    temp = whole.compile((p, x, y)).memory_analysis().temp_size_in_bytes
    assert plan.per_network == pytest.approx(memory.PEAK_FACTOR["cpu"] * temp / 7, rel=0.01)
    # A budget that holds the program of chunks of 2 as XLA compiles it, no more.
    temp2 = memory._compile(probe, (0, 0, 0), (p, x, y), 2).memory_analysis().temp_size_in_bytes
    budget = plan.fixed + int(memory.PEAK_FACTOR["cpu"] * temp2) + 1
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        chunked = fit_seeds(probe, (0, 0, 0), (p, x, y), budget, "probe")
    assert chunked.chunk == 2
    assert "7 seeds need" in caplog.text and "4 chunks of 2 seeds" in caplog.text
    assert "one network alone" not in caplog.text
    # Chunks of 2 seeds may compile to other kernels than 7 at once: equal to float rounding.
    for a, b in zip(jax.tree.leaves(whole(p, x, y)), jax.tree.leaves(chunked(p, x, y)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_shared_arguments_stay_shared():
    def f(a, b):
        return a * b

    a = jnp.arange(6.0).reshape(3, 2)
    out = fit_seeds(f, (0, None), (a, jnp.float32(2)), 1, "f")(a, jnp.float32(2))
    np.testing.assert_array_equal(out, 2 * a)


@pytest.mark.e2e
def test_one_network_over_the_budget_is_said_even_alone(caplog):
    # (several seeds: test_job_with_a_small_budget_chunks_its_seeds)
    p, x, y = nets(S=1, B=2, T=3, H=2)
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        f = fit_seeds(make_probe(vanilla("tanh"), "all"), (0, 0, 0), (p, x, y), 1, "probe")
    assert "probe: one network alone needs" in caplog.text and f.chunk == 1
    assert "chunks of" not in caplog.text


def _plant_resource_exhausted(monkeypatch, when, largest_ok=2):
    """Makes compiling (`when="compile"`) or running (`"run"`) a call of more than
    `largest_ok` networks per chunk raise XLA's out-of-memory error; returns the chunks tried."""
    real = memory._compile
    tried = []

    def oom():
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                         "allocate 34359738368 bytes (planted)")

    def compile_(f, in_axes, args, chunk):
        n = min(chunk, memory._networks(args, in_axes))
        tried.append(n)
        if when == "compile" and n > largest_ok:
            oom()
        compiled = real(f, in_axes, args, chunk)
        if when == "run" and n > largest_ok:
            return FailsToRun(compiled)
        return compiled

    class FailsToRun:
        def __init__(self, compiled):
            self.memory_analysis = compiled.memory_analysis

        def __call__(self, *a):
            oom()

    monkeypatch.setattr(memory, "_compile", compile_)
    return tried


@pytest.mark.parametrize("when", ["compile", "run"])
@pytest.mark.e2e
def test_resource_exhausted_halves_the_chunk_with_equal_results(monkeypatch, caplog, when):
    p, x, y = nets(S=7, B=4, T=30, H=16)
    # the programs of test_chunked_seeds_give_the_same_results
    probe = make_probe(vanilla("tanh"), "all")
    whole = fit_seeds(probe, (0, 0, 0), (p, x, y), None, "probe")(p, x, y)
    tried = _plant_resource_exhausted(monkeypatch, when, largest_ok=1)
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        f = fit_seeds(probe, (0, 0, 0), (p, x, y), None, "probe")
        got = f(p, x, y)
    # 7 -> 2 (chunks of 3 would keep 3 + the remainder 1 live: no better than 4) -> 1
    assert f.chunk == 1 and tried[-3:] == [7, 2, 1]
    assert "out of device memory with chunks of 7 networks (RESOURCE_EXHAUSTED): retrying in " \
           "4 chunks of 2" in caplog.text
    assert "out of device memory with chunks of 2 networks (RESOURCE_EXHAUSTED): retrying in " \
           "7 chunks of 1" in caplog.text
    if when == "compile":  # the estimate itself could not compile all seven: planned from one
        assert "planning from one" in caplog.text
    # equal to float rounding: other chunk sizes may compile to other kernels
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Later calls keep the chunk that worked.
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(f(p, x, y)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_other_errors_are_not_retried(monkeypatch):
    assert is_resource_exhausted(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: oom"))
    assert not is_resource_exhausted(jax.errors.JaxRuntimeError("INTERNAL: boom"))
    assert not is_resource_exhausted(MemoryError("RESOURCE_EXHAUSTED"))

    def f(a):
        return a

    monkeypatch.setattr(memory, "_compile", lambda *a: (_ for _ in ()).throw(
        jax.errors.JaxRuntimeError("INTERNAL: boom")))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        fit_seeds(f, (0,), (jnp.ones((4, 2)),), None, "f")


@pytest.mark.e2e
def test_probe_memory_is_within_2_5_trajectories():
    # The probe keeps one trajectory H_1..H_T: at most 2.5x S*T*B*H numbers by XLA's plan.
    S, B, T, H = 4, 16, 512, 64
    p, x, y = nets(S, B, T, H)
    probe = jax.jit(jax.vmap(make_probe(vanilla("tanh"), "all")))
    need = compiled_bytes(probe.lower(p, x, y).compile())
    trajectory = S * T * B * H * 4
    assert need <= 2.5 * trajectory, need / trajectory


def test_budget():
    assert memory_budget(0.5) == 2**29
    free = free_bytes()
    assert free is not None and free > 0  # Linux: MemAvailable
    budget = memory_budget(None)
    assert memory.in_use_bytes() < budget <= memory.in_use_bytes() + free


@pytest.mark.e2e
def test_job_with_a_small_budget_chunks_its_seeds(tmp_path, monkeypatch, caplog):
    """A job's probe and training run in chunks under a tiny max_memory_gb (one network alone
    is over it, and the log says so besides the chunks), and again with a planted
    RESOURCE_EXHAUSTED, with the results of all seeds at once."""
    # the sizes of gpu_check.py --quick, which then finds these programs compiled
    common = ["seq_len=12", "hidden_size=8", "batch_size=4", "seeds=3", "probe.loss_at=all",
              "train.steps=4", "train.log_every=2"]
    run_job(compose_cfg(common), tmp_path / "big")
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        run_job(compose_cfg(common + ["max_memory_gb=1e-9"]), tmp_path / "small")
    for what in ("probe", "training"):
        assert f"{what}: 3 seeds need" in caplog.text and "3 chunks of 1 seeds" in caplog.text
        assert f"{what}: one network alone needs" in caplog.text
    caplog.clear()
    _plant_resource_exhausted(monkeypatch, "run")
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        run_job(compose_cfg(common), tmp_path / "planted")
    for what in ("probe", "training"):
        assert f"{what}: out of device memory with chunks of 3 networks" in caplog.text
    for name in ("grad_norms.parquet", "metrics.parquet"):
        a = pd.read_parquet(tmp_path / "big" / name)
        assert (a["T"] == 12).all()
        for other in ("small", "planted"):
            b = pd.read_parquet(tmp_path / other / name)
            # the same numbers; only the budget's own column says what differed
            pd.testing.assert_frame_equal(a.drop(columns="max_memory_gb"),
                                          b.drop(columns="max_memory_gb"), rtol=1e-5)


PEAK_SCRIPT = """
import json, sys, logging
sys.path.insert(0, {tests!r})
from helpers import compose_cfg
from rnnjax.app.config import register_configs
from rnnjax.app.job import enable_compilation_cache, run_job
from rnnjax.app.memory import peak_resident_bytes, resident_bytes
lines = []
logging.getLogger("rnnjax").addHandler(logging.Handler())
logging.getLogger("rnnjax").handlers[-1].emit = lambda r: lines.append(r.getMessage())
logging.getLogger("rnnjax").setLevel(logging.INFO)
import jax
jax.devices()  # the backend started
register_configs()  # the schema in Hydra's ConfigStore, as the app stores it
base = resident_bytes()
budget = base + {room}
cfg = compose_cfg({job!r} + [f"max_memory_gb={{budget / 2**30}}"])
run_job(cfg, {out!r} + "/job")
# VmHWM, the peak of this program's memory: ru_maxrss would also count the parent's before exec
peak = peak_resident_bytes()
print(json.dumps({{"base": base, "budget": budget, "peak": peak, "log": lines}}))
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_peak_stays_under_max_memory_gb_in_a_fresh_process(tmp_path):
    """The measured peak (resident memory of a fresh process, where the CPU is the device)
    stays under max_memory_gb although all seeds at once would need more."""
    job = ["activation=tanh", "probe.loss_at=last", "seeds=16", "seq_len=512",
           "hidden_size=24", "batch_size=512"]
    # Compiling leaves ~200 MB resident; the 16 networks' temporaries ~29 MB each: all at once
    # need ~670 MB above the base (a room of 650 MB was within 2% of that: flaky), 8 ~430 MB.
    room = 550 * 10**6
    script = PEAK_SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path), room=room,
                                job=job)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compiled here: a cache hit would not chunk
    env.pop("JAX_ENABLE_X64", None)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    log = "\n".join(r["log"])
    assert "probe: 16 seeds need" in log and "chunks of" in log, log
    need = float(log.split("probe: 16 seeds need ")[1].split(" GB")[0]) * 1e9
    assert need > r["budget"]  # all at once would not have fitted
    assert r["peak"] < r["budget"], (r["peak"] / 1e6, r["budget"] / 1e6, r["base"] / 1e6, log)


@pytest.mark.parametrize("overrides,key", [
    (["seeds=1000000000"], "seeds=1000000000"),
    (["task=timemachine", "seq_len=200000"], "seq_len=200000"),
    (["hidden_size=1000000"], "hidden_size=1000000"),
])
def test_jobs_beyond_the_hosts_memory_are_refused_at_validation(overrides, key, monkeypatch,
                                                                tmp_path):
    text = tmp_path / "timemachine.txt"
    text.write_text("a b " * 60_000)  # 240 kB: enough windows for seq_len=200000
    monkeypatch.setenv("RNNJAX_DATA", str(tmp_path))
    monkeypatch.setattr(memory, "host_available", lambda: 8 * 10**9)
    monkeypatch.setattr("rnnjax.app.memory.host_available", lambda: 8 * 10**9)
    with pytest.raises(ConfigError) as e:
        compose_cfg(overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key} is invalid: with ")
    assert "GB of host memory" in msg and "more than the 8.0 GB available" in msg
    compose_cfg(["seeds=64", "seq_len=1024", "hidden_size=256"])  # a large job that fits


@pytest.mark.e2e
def test_gpu_check_runs_quick_on_the_cpu(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--quick", "--out-dir", str(tmp_path / "runs"), "--json",
                           str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device_kind"] and r["backend"] == jax.default_backend()
    assert r["peak_bytes"] > 0 and r["wall_time_s"] > 0 and r["equal_to_smaller_chunks"]
    assert "peak" in capsys.readouterr().out
