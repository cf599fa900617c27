"""Shared fixtures. x64 is enabled for the whole test process so that float64 references can be
computed in JAX too; the harness passes dtypes explicitly, and tests check that float32 jobs
still compute in float32."""

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# XLA's CPU backend compiling fast: the tests compile hundreds of small programs, and
# compiling is most of their time on a CPU. The LLVM backend without its expensive
# optimizations (about 30% less CPU time in all) and the elemental emitters instead of the
# fusion emitters (about 40% less again, measured on the probe and LSTM tests): the same HLO
# programs, compiled in less time, run a little slower. Code generation in one piece rather
# than split for parallel threads: about 12% less CPU time compiling, on 2 cores that the two
# test workers keep busy anyway. Subprocesses inherit the flags (and a subprocess that imports
# this module again does not add them twice).
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in (
    "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
    if f not in _flags])

# OpenBLAS (numpy's references, scipy) on one thread in the test workers and every subprocess
# (they inherit it; numpy reads it as it loads, and this process has loaded it already). Its
# threads spin while they wait for work, and with two workers on 2 cores they spin on the core
# the other worker needs: the suite took about 10% less time this way, back to back (pytest's
# 252 s against 280 s, 421 s of CPU against 470 s; and 232 s against 261 s). The references'
# matrices are small: one thread loses nothing.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Python's compiled modules are kept (in __pycache__, git-ignored) even where the environment
# says not to write them (PYTHONDONTWRITEBYTECODE, as on CI's machines): the test workers and
# the test's subprocesses would otherwise each compile rnnjax's and the tests' sources again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

import jax  # noqa: E402 (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
# The Time Machine text, from $RNNJAX_DATA as the session started (each test then runs without
# the variable, see _isolated_cache).
DATA = os.environ.get("RNNJAX_DATA")
TEXT = Path(DATA) / "timemachine.txt" if DATA else None


@pytest.fixture
def key():
    """A fixed key, so a failure reproduces."""
    return jax.random.key(20131126)


@pytest.fixture
def timemachine_file():
    """The Time Machine text in $RNNJAX_DATA (skips, saying so, where there is none)."""
    if TEXT is None or not TEXT.is_file():
        pytest.skip("the Time Machine text is not available: set RNNJAX_DATA to a directory "
                    "holding timemachine.txt to run this test")
    return TEXT


@pytest.fixture(scope="session", autouse=True)
def jax_cache(tmp_path_factory):
    """One JAX compilation cache for the whole session: in-process jobs, subprocesses (through
    JAX_COMPILATION_CACHE_DIR) and both xdist workers, whose temporary directories share a
    parent. Every program is cached, however fast it compiled."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    cache = base / "jax_cache"
    cache.mkdir(exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return str(cache)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's ~/.cache from tests (downloads included)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNJAX_DATA", raising=False)


# The longest test files, started first (xdist hands out whole files in this order: two to each
# worker, then the next to whichever is left with one): a long file started last would end the
# suite with the other worker idle. The docs build (the longest, its tutorials in other
# processes) comes third, so that its browser check, after the build, finds Chromium, which
# .ci/run installs in the background after the SLURM cluster. The SLURM tests mostly wait on
# the cluster, so their worker waits while the other computes; they come sixth, once CI's
# cluster (started as the test command installs) is up, rather than waiting for it to start.
FIRST = ["test_sweep.py", "test_api.py", "test_docs.py", "test_plots.py", "test_probes.py",
         "test_slurm.py", "test_cli.py", "test_memory.py", "test_train.py", "test_tracking.py",
         "test_scan.py", "test_job.py", "test_lstm.py"]


def pytest_collection_modifyitems(config, items):
    """The files of FIRST first, in that order (a stable sort: the rest as collected)."""
    def rank(item):
        name = item.nodeid.split("::")[0].removeprefix("tests/")
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)


def exit_code_of(main: Callable[[list[str]], object], argv: list[str]) -> int:
    """`main(argv)`'s exit code (0 when it returns None, its SystemExit's code otherwise),
    in-process. Hydra configures logging for the job it runs: pytest's handlers are given
    back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = main(argv) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return code


@pytest.fixture
def app(tmp_path, monkeypatch, capsys):
    """`app(*argv, cwd=None) -> helpers.Result`: the command line (`rnnjax run`), in-process,
    in tmp_path (or cwd)."""
    from helpers import Result

    from rnnjax.sweeps.app import main

    monkeypatch.chdir(tmp_path)
    absl = sys.modules.get("absl.logging")
    if absl is not None:
        # Hydra's logging.config.dictConfig closes every handler; absl's (imported with JAX)
        # would close the stream it was made with, pytest's own capture, unless it is the
        # interpreter's.
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)

    def call(*argv, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = exit_code_of(main, list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call
