"""Names of directories and folders made from free text (overrides, run names): the characters
kept, the bound on the length and the hash that keeps two texts apart."""

import hashlib
import re

NAME_MAX = 120  # characters of a directory name (file systems allow 255 bytes)
UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]")  # a character a name does not keep (it becomes `_`)


def with_digest(name: str, key: str) -> str:
    """`name` cut to fit NAME_MAX with `-` and 12 hex digits of the sha1 of `key` after it."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"{name[:NAME_MAX - 13]}-{digest}"


def safe_name(text: str, key: str) -> str:
    """`text` as one directory name: letters, digits and `_.,=+-` only (others become `_`), no
    leading `.` (so never `.` or `..`), at most 120 characters.

    A name that had to be changed or cut ends with `-` and 12 hex digits of the sha1 of `key`,
    so that different overrides never share a directory and the same ones always get it.
    """
    name = UNSAFE.sub("_", text)
    name = re.sub(r"^\.", "_", name) or "default"
    if name != (text or "default") or len(name) > NAME_MAX:
        name = with_digest(name, key)
    return name


def folder_name(run_name: str) -> str:
    """A folder name from a tracker's run name (`task.path=/a/b` must not make folders): the
    characters `safe_name` keeps, without leading or trailing dots, `run` when nothing is
    left, and a hash of the run name only when it had to be cut."""
    name = UNSAFE.sub("_", run_name).strip(".") or "run"
    return with_digest(name, run_name) if len(name) > NAME_MAX else name
