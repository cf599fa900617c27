"""summary.json's provenance block: code version, git state, libraries, machine, data, time."""

import hashlib
import re
import shutil
import subprocess
from datetime import datetime
from importlib import metadata

import jax
import pytest

from rnnjax.app import provenance


@pytest.fixture
def fresh(monkeypatch):
    """provenance's per-process caches cleared before and after the test."""
    for f in (provenance.code_version, provenance.git_state):
        f.cache_clear()
    yield monkeypatch
    for f in (provenance.code_version, provenance.git_state):
        f.cache_clear()


def test_block_has_every_field():
    start = provenance.now()
    p = provenance.provenance(start, {"path": "/x", "sha1": "ab"})
    assert set(p) == {"rnnjax_version", "code_version", "git_commit", "git_dirty", "versions",
                      "backend", "device_kind", "host", "pid", "started_at", "ended_at", "data"}
    for name in ("jax", "jaxlib", "optax", "hydra-core", "numpy"):
        assert p["versions"][name] == metadata.version(name)
    assert p["rnnjax_version"] == metadata.version("rnnjax")
    assert p["code_version"].startswith(p["rnnjax_version"] + "+src.")
    assert p["backend"] == jax.default_backend() and p["device_kind"]
    started, ended = (datetime.fromisoformat(p[k]) for k in ("started_at", "ended_at"))
    assert started.tzinfo is not None and started <= ended
    assert p["data"] == {"path": "/x", "sha1": "ab"}


def test_git_commit_and_dirty_flag_of_this_checkout(fresh):
    root = provenance.PACKAGE_DIR.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not run from a git checkout")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    commit, dirty = provenance.git_state()
    assert commit == head and re.fullmatch("[0-9a-f]{40}", commit) and isinstance(dirty, bool)


def test_git_is_asked_once_per_process(fresh):
    calls = []
    real = subprocess.run
    fresh.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        provenance.provenance(provenance.now(), None)
    assert len(calls) <= 1


def test_outside_a_checkout_the_commit_is_null(fresh, tmp_path):
    shutil.copytree(provenance.PACKAGE_DIR, tmp_path / "rnnjax")
    fresh.setattr(provenance, "PACKAGE_DIR", tmp_path / "rnnjax")
    assert provenance.git_state() == (None, None)


def test_code_version_follows_the_source(fresh, tmp_path):
    shutil.copytree(provenance.PACKAGE_DIR, tmp_path / "rnnjax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    fresh.setattr(provenance, "PACKAGE_DIR", tmp_path / "rnnjax")
    before = provenance.code_version()
    assert before == provenance.code_version()  # cached and stable
    with open(tmp_path / "rnnjax" / "probes.py", "a") as f:
        f.write("\n# an edit\n")
    provenance.code_version.cache_clear()
    assert provenance.code_version() != before


def test_data_file_is_hashed(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the time machine")
    d = provenance.data_file("timemachine", str(text))
    assert d["path"] == str(text.resolve())
    assert d["sha1"] == hashlib.sha1(b"the time machine").hexdigest()
    text.write_text("the time machine!")  # another version of the file: hashed again
    assert provenance.data_file("timemachine", str(text))["sha1"] == hashlib.sha1(
        b"the time machine!").hexdigest()
    assert provenance.data_file("random", None) is None
