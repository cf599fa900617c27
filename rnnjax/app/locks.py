"""The lock of a job's directory: two processes never write one job's files (a second one
stops at once with `JobBusy`, naming the holder)."""

import fcntl
import functools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"  # in a job's directory; whoever holds its flock runs the job


class JobBusy(RuntimeError):
    """Another live process holds the job directory's lock: it runs the same job now."""


@contextmanager
def job_lock(out_dir: str | Path) -> Iterator[None]:
    """Holds an exclusive lock on a job directory (fcntl.flock on `out_dir/.lock`) for the
    block, so that two processes never write one job's files.

    Raises:
      JobBusy: at once, naming the directory and the process that holds it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # "a+": opening must not erase the holder's name before the lock says who holds it.
    with open(out / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise JobBusy(f"{out} is in use by {holder}, which runs the same job: wait for it "
                          "(the same command then resumes) or stop it") from None
        f.truncate(0)
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield  # closing the file releases the lock, also when the process dies


def holding_job_lock(run):
    """Decorates `run(cfg, out_dir, ...)` to run under `job_lock(out_dir)`."""

    @functools.wraps(run)
    def locked(cfg, out_dir, *args, **kwargs):
        with job_lock(out_dir):
            return run(cfg, out_dir, *args, **kwargs)

    return locked
