"""Helpers that several test modules share (fixtures live in conftest.py): tiny job sizes, the
in-process command line's result, the Hydra app as a user runs it, a composed config, and a
cell whose state is a pytree (`pair_cell`)."""

import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT

SMALL = ["hidden_size=4", "batch_size=2", "seeds=2"]
TINY = ["seq_len=3", *SMALL]  # jobs that differ in seed, init or task data share compiled code
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]  # the Hydra app as a user runs it


class Result(NamedTuple):
    """What the command line did in-process (the `app` fixture)."""

    code: int
    out: str
    err: str

    def closing(self) -> str:
        """The sweep's closing line (the open commands follow it)."""
        return next(ln for ln in self.err.splitlines() if ln.startswith("rnnjax: sweep "))


def run(args, cwd, jax_cache, check=True):
    """experiments/run.py with `args` in a subprocess, in `cwd`, sharing the JAX cache."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # compact errors
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    p = subprocess.run(RUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def compose_cfg(overrides):
    """The validated config of conf/config.yaml with `overrides`."""
    from hydra import compose, initialize_config_dir

    from rnnjax.app.validate import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))


class PairParams(NamedTuple):
    W_xh: jax.Array  # (D, H, 2)
    W_hh: jax.Array  # (H, 2, H, 2)
    a: jax.Array  # (H,) the running state's decay
    W_hq: jax.Array  # (H, 2, Q)
    W_mq: jax.Array  # (H, Q)


def pair_cell():
    """A tiny cell whose state is a pytree {"h": (B, H, 2), "m": (B, H)} and whose hidden output
    is h, of shape (B, H, 2): h_t = tanh(h_{t-1} . W_hh + x_t W_xh), m_t = a m_{t-1} + h_t[..., 0]
    + h_t[..., 1] ** 2, read out from both."""
    from rnnjax.core.cells import Cell

    def init(key, D, H, Q, dtype=jnp.float64):
        k = jax.random.split(key, 5)
        return PairParams(jax.random.normal(k[0], (D, H, 2), dtype),
                           1.1 * jax.random.normal(k[1], (H, 2, H, 2), dtype) / np.sqrt(2 * H),
                           jax.random.uniform(k[2], (H,), dtype, 0.5, 0.9),
                           jax.random.normal(k[3], (H, 2, Q), dtype) / np.sqrt(2 * H),
                           jax.random.normal(k[4], (H, Q), dtype) / np.sqrt(H))

    def initial_state(p, B):
        H = p.a.shape[0]
        return {"h": jnp.zeros((B, H, 2), p.a.dtype), "m": jnp.zeros((B, H), p.a.dtype)}

    def step(p, s, x_t):
        drive = (p.W_xh[x_t] if jnp.issubdtype(x_t.dtype, jnp.integer)
                 else jnp.einsum("bd,dij->bij", x_t, p.W_xh))
        h = jnp.tanh(jnp.einsum("bij,ijkl->bkl", s["h"], p.W_hh) + drive)
        return {"h": h, "m": p.a * s["m"] + h[..., 0] + h[..., 1] ** 2}

    def readout(p, s):
        return jnp.einsum("bij,ijq->bq", s["h"], p.W_hq) + s["m"] @ p.W_mq

    return Cell(name="pair", init=init, initial_state=initial_state, step=step, readout=readout,
                hidden=lambda s: s["h"], recurrent=("W_hh", "a"))
