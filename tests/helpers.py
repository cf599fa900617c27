"""Helpers that several test modules share (fixtures live in conftest.py): tiny job sizes, the
in-process command line's result, the Hydra app as a user runs it, and a composed config."""

import os
import subprocess
import sys
from typing import NamedTuple

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

    from rnnjax.app.config import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))
