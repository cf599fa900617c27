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


def test_file_sha1_is_hashlib_and_follows_each_version_of_the_file(tmp_path):
    """rnnjax.core.files.file_sha1, the one cached hash (results' file records, data files):
    hashlib's sha1 of the bytes, computed again when the file changes."""
    import os

    from rnnjax.core.files import file_sha1
    from rnnjax.core.tasks import DataError, sha1_of

    f = tmp_path / "a.txt"
    f.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one block of 1 MiB
    assert file_sha1(f) == hashlib.sha1(f.read_bytes()).hexdigest() == sha1_of(f)
    f.write_bytes(b"other")
    os.utime(f, ns=(1, 1))  # another version, whatever the clock's resolution
    assert file_sha1(f) == hashlib.sha1(b"other").hexdigest() == sha1_of(f)
    with pytest.raises(FileNotFoundError):
        file_sha1(tmp_path / "missing")
    with pytest.raises(DataError, match="data file"):  # the checked read says what is wrong
        sha1_of(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="allowed: a regular text file"):
        sha1_of(tmp_path / "fifo")
