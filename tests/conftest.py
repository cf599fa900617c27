"""Shared fixtures. x64 is enabled for the whole test process so that float64 references can be
computed in JAX too; the harness passes dtypes explicitly, and tests check that float32 jobs
still compute in float32."""

import os
from pathlib import Path

import jax
import pytest

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


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """A compilation cache shared by the subprocesses of the whole session."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's ~/.cache from tests (downloads included)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNJAX_DATA", raising=False)
