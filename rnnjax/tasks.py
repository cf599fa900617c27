"""Tasks: where the probed token batches come from.

- `random`: i.i.d. uniform tokens; targets are the next tokens.
- `timemachine`: d2l's character language model on H. G. Wells' The Time Machine.
"""

import hashlib
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

TASKS = ("random", "timemachine")

TIMEMACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIMEMACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIMEMACHINE_FILE = "timemachine.txt"


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be (message is one line)."""


# ----------------------------------------------------------------------------- random tokens


def make_random_batch(
    vocab_size: int, batch_size: int, seq_len: int
) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)`: i.i.d. uniform tokens, y the next token of x.

    Returns:
      x: (B, T) int32 tokens; y: (B, T) int32, y[:, t] = x[:, t + 1] of one (B, T + 1) draw.
    """

    def batch(key):
        seq = jax.random.randint(key, (batch_size, seq_len + 1), 0, vocab_size, dtype=jnp.int32)
        return seq[:, :-1], seq[:, 1:]

    return batch


# ----------------------------------------------------------------------------- time machine


def sha1_of(path: Path) -> str:
    """Hex sha1 of a file's bytes."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def cache_dir() -> Path:
    """Where downloaded data is cached: $XDG_CACHE_HOME/rnnjax, else ~/.cache/rnnjax."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnjax"


def download(url: str, dest: Path, sha1: str) -> Path:
    """Downloads `url` to `dest` atomically and checks its sha1; raises DataError on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise DataError(
            f"task=timemachine: cannot download {url} ({e}); put {TIMEMACHINE_FILE} in "
            f"$RNNJAX_DATA or at {dest}, or set task.path=/path/to/{TIMEMACHINE_FILE}"
        ) from None
    got = hashlib.sha1(data).hexdigest()
    if got != sha1:
        raise DataError(f"task=timemachine: {url} has sha1 {got}, expected {sha1}")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest


def timemachine_path(path: str | None = None) -> Path:
    """Finds the Time Machine text: `path`, else $RNNJAX_DATA/timemachine.txt, else the cache
    (downloading it once from d2l's data URL and checking its sha1).

    Raises:
      DataError: with a one-line message saying where to put the file.
    """
    if path:
        p = Path(path).expanduser()
        check_readable(p, "task.path")
        return p
    if os.environ.get("RNNJAX_DATA"):
        p = Path(os.environ["RNNJAX_DATA"]).expanduser() / TIMEMACHINE_FILE
        check_readable(p, "$RNNJAX_DATA")
        return p
    p = cache_dir() / TIMEMACHINE_FILE
    if p.is_file() and sha1_of(p) == TIMEMACHINE_SHA1:
        return p
    return download(TIMEMACHINE_URL, p, TIMEMACHINE_SHA1)


def check_readable(p: Path, key: str) -> None:
    """Raises DataError naming `key` unless `p` is a readable UTF-8 text file."""
    try:
        p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise DataError(f"{key}: cannot read {str(p)!r} as a text file ({reason})") from None


def preprocess(text: str) -> str:
    """d2l's preprocessing: every run of non-letters becomes one space, then lowercase."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


def build_vocab(tokens: list[str]) -> list[str]:
    """d2l's `Vocab` (min_freq 0): the sorted set of tokens plus '<unk>'.

    For the Time Machine this is ' ', '<unk>', 'a'..'z': 28 tokens.
    """
    return sorted(set(["<unk>"] + tokens))


def load_timemachine(path: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The Time Machine corpus as token ids, and its vocabulary (index -> token).

    Returns:
      corpus: (N,) int32 character ids; vocab: list of 28 tokens.
    """
    text = preprocess(timemachine_path(path).read_text(encoding="utf-8"))
    tokens = list(text)
    vocab = build_vocab(tokens)
    index = {tok: i for i, tok in enumerate(vocab)}
    corpus = np.array([index.get(tok, index["<unk>"]) for tok in tokens], dtype=np.int32)
    return corpus, vocab


def windows(corpus: np.ndarray, seq_len: int) -> np.ndarray:
    """All windows of `seq_len + 1` consecutive tokens, as d2l builds them.

    Returns:
      (N - seq_len, seq_len + 1) int32; X = [:, :-1], Y = [:, 1:].
    """
    n = len(corpus) - seq_len
    if n < 1:
        raise DataError(
            f"seq_len={seq_len}: the text has only {len(corpus)} tokens, fewer than one window "
            f"of seq_len + 1"
        )
    return np.lib.stride_tricks.sliding_window_view(corpus, seq_len + 1)[:n].copy()


def make_window_batch(wins: np.ndarray, batch_size: int) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)` sampling `batch_size` windows uniformly (with replacement).

    Returns:
      x, y: (B, T) int32.
    """
    table = jnp.asarray(wins)

    def batch(key):
        idx = jax.random.randint(key, (batch_size,), 0, table.shape[0])
        w = table[idx]
        return w[:, :-1], w[:, 1:]

    return batch
