"""Fitting seeds into memory: XLA's estimate, the chunked lax.map path, and the probe's
memory as a multiple of the hidden-state trajectory."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from test_cli import run

from rnnjax.cells import vanilla
from rnnjax.cells.vanilla import init_params
from rnnjax.init import normal
from rnnjax.memory import compiled_bytes, fit_seeds, free_bytes, memory_budget
from rnnjax.probes import make_probe


def nets(S, B, T, H, V=11, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(3), S)
    p = jax.vmap(lambda k: init_params(k, normal(0.3), normal(0.3), V, H, V, dtype))(keys)
    x = jax.random.randint(jax.random.key(4), (S, B, T), 0, V)
    return p, x, (x + 1) % V


def test_chunked_seeds_give_the_same_results(caplog):
    p, x, y = nets(S=7, B=4, T=30, H=16)
    probe = make_probe(vanilla("tanh"), "all")
    whole = fit_seeds(probe, (0, 0, 0), (p, x, y), None, "probe")(p, x, y)
    need = compiled_bytes(jax.jit(jax.vmap(probe)).lower(p, x, y).compile())
    assert need > 0
    with caplog.at_level(logging.INFO, logger="rnnjax"):
        chunked = fit_seeds(probe, (0, 0, 0), (p, x, y), need // 3, "probe")(p, x, y)
    assert "7 seeds need" in caplog.text and "chunks of 2 seeds" in caplog.text
    # Chunks of 2 seeds may compile to other kernels than 7 at once: equal to float rounding.
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_shared_arguments_stay_shared():
    def f(a, b):
        return a * b

    a = jnp.arange(6.0).reshape(3, 2)
    out = fit_seeds(f, (0, None), (a, jnp.float32(2)), 1, "f")(a, jnp.float32(2))
    np.testing.assert_array_equal(out, 2 * a)


def test_probe_memory_is_within_2_5_trajectories():
    # The probe keeps one trajectory H_1..H_T: at most 2.5x S*T*B*H numbers, by XLA's estimate.
    S, B, T, H = 4, 16, 512, 64
    p, x, y = nets(S, B, T, H)
    probe = jax.jit(jax.vmap(make_probe(vanilla("tanh"), "all")))
    need = compiled_bytes(probe.lower(p, x, y).compile())
    trajectory = S * T * B * H * 4
    assert need <= 2.5 * trajectory, need / trajectory


def test_budget():
    assert memory_budget(0.5) == 2**29
    free = free_bytes()
    assert free is None or free > 0
    assert memory_budget(None) is None or memory_budget(None) <= free


def test_job_with_a_small_budget_chunks_its_seeds(tmp_path, jax_cache):
    common = ["activation=relu", "seq_len=40", "hidden_size=16", "batch_size=8", "seeds=5",
              "train.steps=4", "train.log_every=2"]
    big, small = tmp_path / "big", tmp_path / "small"
    run([f"hydra.run.dir={big}"] + common, tmp_path, jax_cache)
    p = run([f"hydra.run.dir={small}", "max_memory_gb=0.0001"] + common, tmp_path, jax_cache)
    out = p.stdout + p.stderr
    assert "probe: 5 seeds need" in out and "training: 5 seeds need" in out
    for name in ("grad_norms.parquet", "metrics.parquet"):
        a, b = pd.read_parquet(big / name), pd.read_parquet(small / name)
        pd.testing.assert_frame_equal(a, b, rtol=1e-5)
