"""Data files on disk, for every task that reads one (the Time Machine's text in
`rnnjax.core.tasks`, MNIST's files in `rnnjax.core.mnist`): the one-line error they raise, where
downloads are cached, reading a file that must be a regular file of bounded size, and writing
one atomically."""

import os
import stat
import tempfile
from pathlib import Path


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be (message is one line)."""


def cache_dir() -> Path:
    """Where downloaded data is cached: $XDG_CACHE_HOME/rnnjax, else ~/.cache/rnnjax."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnjax"


def write_atomic(dest: Path, data: bytes) -> Path:
    """Writes `data` to `dest` through a temporary file in its folder renamed over it, so that
    no reader ever sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest


def _size(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n} bytes"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular_file(p: Path, key: str, limit: int, what: str = "data file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    The file is opened without blocking and checked on the open descriptor, so a FIFO, a device
    such as /dev/zero or /dev/urandom, or a directory is refused at once, never read (a FIFO
    would block forever, a device never ends), and at most `limit` + 1 bytes are read even from
    a file that grows meanwhile.

    Args:
      p: the file. key: the config key (or place) the message names. limit: the most bytes.
      what: what the file should be, for the message ("text file").

    Raises:
      DataError: one line naming `key` and what is allowed.
    """
    allowed = f"allowed: a regular {what} of at most {_size(limit)}"
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(f"{key}: cannot read {str(p)!r} as a {what} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{key}: {str(p)!r} is {_file_kind(mode)}; {allowed}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise DataError(f"{key}: cannot read {str(p)!r} ({e.strerror})") from None
    if len(data) > limit:
        raise DataError(f"{key}: {str(p)!r} is larger than {_size(limit)}; {allowed}")
    return data
