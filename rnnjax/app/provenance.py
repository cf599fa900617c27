"""Where a job's numbers came from: summary.json's `provenance` block.

The code's version, the git commit, the libraries, the machine, the data file and the time.
Cheap to collect for every job: the source hash and the one git call are made once per process,
a data file is hashed once per process while it does not change.
"""

import functools
import hashlib
import os
import socket
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from rnnjax.core.mnist import MNIST_TASKS, mnist_folder, mnist_sha1
from rnnjax.core.tasks import DataError, sha1_of, timemachine_path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rnnjax/
LIBRARIES = ("jax", "jaxlib", "optax", "hydra-core", "numpy")  # distributions whose version counts


def version(distribution: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def code_version() -> str:
    """rnnjax's version and a hash of its source: `0.1.0+src.1a2b3c4d5e6f`.

    The hash is the sha1 of every `rnnjax/**/*.py` file (names and bytes, in sorted order), so
    any edit of the package's code, committed or not, installed or checked out, gives another
    code version; git is not needed. Computed once per process: the code a process runs is the
    code it imported.
    """
    h = hashlib.sha1()
    for f in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(f.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return f"{version('rnnjax') or 'unknown'}+src.{h.hexdigest()[:12]}"


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout the package runs from; (None, None) outside one
    (an installed wheel) or without git.

    One `git status` call per process, with the commit from its branch header; dirty means
    tracked files differ from the commit (untracked files do not count).
    """
    root = PACKAGE_DIR.parent
    if not (root / ".git").exists():  # the package must sit at the top of the checkout
        return None, None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch",
             "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    lines = out.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return None, None
    return commit, any(not ln.startswith("#") for ln in lines)


def data_file(task: str, path: str | None) -> dict[str, str] | None:
    """The data file a job of `task` reads, as {"path": absolute path, "sha1": hex sha1};
    None for generated tasks. For MNIST the path is the folder of its four files and the sha1
    one of theirs (`rnnjax.core.mnist.mnist_sha1`).

    `path` is the config's task.path; without it, the file found as the job finds it
    ($RNNJAX_DATA, else the download cache). The hash is cached while the file's inode, size
    and modification time stay the same.

    Raises:
      DataError: the file cannot be found or read.
    """
    if task in MNIST_TASKS:
        folder = mnist_folder(path, task).resolve()
        return {"path": str(folder), "sha1": mnist_sha1(folder)}
    if task != "timemachine":
        return None
    p = timemachine_path(path).resolve()
    try:
        p.stat()
    except OSError as e:
        raise DataError(f"task.path: cannot read {str(p)!r} ({e.strerror})") from None
    return {"path": str(p), "sha1": sha1_of(p)}  # hashed once while the file stays the same


def now() -> str:
    """The local time with its UTC offset, ISO 8601: `2025-01-31T14:02:03+01:00`."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def provenance(started_at: str, data: dict[str, str] | None) -> dict[str, Any]:
    """The `provenance` block of a summary, ended now.

    Args:
      started_at: when the job started (`now()` then).
      data: the job's `data_file`, or None.
    """
    commit, dirty = git_state()
    try:
        backend, device_kind = jax.default_backend(), jax.devices()[0].device_kind
    except RuntimeError:  # a job that failed because the backend did not start
        backend = device_kind = None
    return {
        "rnnjax_version": version("rnnjax"),
        "code_version": code_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {"python": sys.version.split()[0],
                     **{name: version(name) for name in LIBRARIES}},
        "backend": backend,
        "device_kind": device_kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at,
        "ended_at": now(),
        "data": data,
    }
