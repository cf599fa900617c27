"""The sha1 of a file, hashed once per version of the file: loaders, resume and provenance ask
for the same files again and again."""

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

_CACHED = 4096  # versions of files whose sha1 is kept
_SHA1: OrderedDict = OrderedDict()  # (path, inode, size, mtime_ns, checked) -> hex sha1


def file_sha1(path: str | os.PathLike, read: Callable[[Path], bytes] | None = None) -> str:
    """The hex sha1 of a file's bytes, cached while its inode, size and modification time stay
    the same.

    Args:
      path: the file.
      read: reads the file's bytes, raising for a file it refuses (`rnnjax.core.tasks.sha1_of`
        checks a data file this way); default: the file read in blocks of 1 MiB.
    """
    try:
        st = os.stat(path)
    except OSError:
        if read is None:
            raise
        return hashlib.sha1(read(Path(path))).hexdigest()  # `read` says what is wrong
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, read is not None)
    if key in _SHA1:
        _SHA1.move_to_end(key)
        return _SHA1[key]
    digest = hashlib.sha1(read(Path(path)) if read else b"")
    if read is None:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    _SHA1[key] = digest.hexdigest()
    if len(_SHA1) > _CACHED:
        _SHA1.popitem(last=False)
    return _SHA1[key]
