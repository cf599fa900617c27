"""Tasks: where the probed token batches come from.

- `random`: i.i.d. uniform tokens; targets are the next tokens.
- `timemachine`: d2l's character language model on H. G. Wells' The Time Machine.
- `adding`: the adding problem (Le et al. 2015; Arjovsky et al. 2016).
- `copy`: the copy-memory problem (Arjovsky et al. 2016).
"""

import hashlib
import os
import re
import stat
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.baselines import COPY_LENGTH, COPY_SYMBOLS  # data symbols 1..8; to memorize
from rnnjax.core.files import file_sha1

TASKS = ("random", "timemachine", "adding", "copy")

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


# ----------------------------------------------------------------------------- adding, copy


def make_adding_batch(batch_size: int, seq_len: int) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)` for the adding problem, as in Arjovsky et al. (2016).

    Channel 0 holds values in U[0, 1]; channel 1 marks exactly two positions, one in the first
    half and one in the second half of the sequence (for T = 1 both marks fall on step 1).
    The target is the sum of the two marked values, scored by squared error at the last step;
    always predicting 1 scores E[(u1 + u2 - 1)^2] = 1/6 ~ 0.167.

    Returns:
      x: (B, T, 2) float32; y: (B,) float32.
    """
    half = max(seq_len // 2, 1)

    def batch(key):
        k_v, k_a, k_b = jax.random.split(key, 3)
        values = jax.random.uniform(k_v, (batch_size, seq_len))
        first = jax.random.randint(k_a, (batch_size,), 0, half)
        second = jax.random.randint(k_b, (batch_size,), half, max(seq_len, half + 1))
        second = jnp.minimum(second, seq_len - 1)
        t = jnp.arange(seq_len)
        marks = ((t == first[:, None]) | (t == second[:, None])).astype(jnp.float32)
        y = jnp.sum(values * marks, axis=1)
        return jnp.stack([values, marks], axis=-1), y

    return batch


COPY_VOCAB = COPY_SYMBOLS + 2  # 0 blank, 1..8 data, 9 delimiter


def make_copy_batch(batch_size: int, delay: int) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)` for the copy-memory problem of Arjovsky et al. (2016).

    Input: 10 symbols from 1..8, then `delay - 1` blanks (0), the delimiter (9), and 10 more
    blanks: `delay + 20` steps. Target: blanks for `delay + 10` steps, then the 10 symbols.
    A memoryless predictor (blank, then uniform over 8) has cross-entropy
    10 log(8) / (delay + 20) per step.

    Returns:
      x, y: (B, delay + 20) int32 over a vocabulary of 10.
    """

    def batch(key):
        data = jax.random.randint(key, (batch_size, COPY_LENGTH), 1, COPY_SYMBOLS + 1,
                                  dtype=jnp.int32)
        blanks = jnp.zeros((batch_size, delay - 1), jnp.int32)
        mark = jnp.full((batch_size, 1), COPY_VOCAB - 1, jnp.int32)
        tail = jnp.zeros((batch_size, COPY_LENGTH), jnp.int32)
        x = jnp.concatenate([data, blanks, mark, tail], axis=1)
        y = jnp.concatenate([jnp.zeros((batch_size, delay + COPY_LENGTH), jnp.int32), data], 1)
        return x, y

    return batch


# ----------------------------------------------------------------------------- time machine


def sha1_of(path: Path, key: str = "data file") -> str:
    """Hex sha1 of a data file's bytes (read as `read_data_file` does: a regular file of at
    most 1 GiB, else DataError naming `key`)."""
    return file_sha1(path, lambda p: read_data_file(p, key))  # hashed once per version


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


MAX_TEXT_BYTES = 2**30  # a data file larger than 1 GiB is refused, not read


def _size(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n} bytes"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_data_file(p: Path, key: str) -> bytes:
    """The bytes of a regular file of at most MAX_TEXT_BYTES (1 GiB).

    The file is opened without blocking and checked on the open descriptor, so a FIFO, a device
    such as /dev/zero or /dev/urandom, or a directory is refused at once, never read (a FIFO
    would block forever, a device never ends), and at most MAX_TEXT_BYTES + 1 bytes are read
    even from a file that grows meanwhile.

    Raises:
      DataError: one line naming `key` and what is allowed.
    """
    allowed = f"allowed: a regular text file of at most {_size(MAX_TEXT_BYTES)}"
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(f"{key}: cannot read {str(p)!r} as a text file ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{key}: {str(p)!r} is {_file_kind(mode)}; {allowed}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_TEXT_BYTES + 1)
        except OSError as e:
            raise DataError(f"{key}: cannot read {str(p)!r} ({e.strerror})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise DataError(f"{key}: {str(p)!r} is larger than {_size(MAX_TEXT_BYTES)}; {allowed}")
    return data


def read_text(p: Path, key: str) -> str:
    """A data file as UTF-8 text (see `read_data_file`); DataError naming `key` otherwise."""
    try:
        return read_data_file(p, key).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{key}: cannot read {str(p)!r} as a text file (not UTF-8 text)"
                        ) from None


def check_readable(p: Path, key: str) -> None:
    """Raises DataError naming `key` unless `p` is a readable UTF-8 text file of at most
    MAX_TEXT_BYTES."""
    read_text(p, key)


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
    text = preprocess(read_text(timemachine_path(path), "task.path" if path else "the text"))
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


NUM_TRAIN, NUM_VAL = 10_000, 5_000  # d2l's TimeMachine split of the windows


def split_windows(wins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d2l's split: the first 10000 windows train, the next 5000 validate.

    Raises DataError when the text has fewer than 10001 windows."""
    check_windows(len(wins) + wins.shape[1] - 1, wins.shape[1] - 1)
    return wins[:NUM_TRAIN], wins[NUM_TRAIN:NUM_TRAIN + NUM_VAL]


def check_windows(n_tokens: int, seq_len: int) -> None:
    """Raises DataError unless a text of `n_tokens` tokens has more than d2l's 10000 windows of
    `seq_len + 1` tokens (10000 to train on, and at least one to validate)."""
    n = max(n_tokens - seq_len, 0)
    if n <= NUM_TRAIN:
        raise DataError(f"task.path: the text has {n_tokens} characters after preprocessing, so "
                        f"{n} windows of seq_len + 1 = {seq_len + 1}; task=timemachine needs "
                        f"more than d2l's {NUM_TRAIN} (use a longer text or a smaller seq_len)")


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


# ----------------------------------------------------------------------------- one interface


class Task(NamedTuple):
    """A task as the job sees it: sizes, a loss kind and pure batch functions of a key."""

    kind: str  # "tokens" (softmax cross-entropy) or "regression" (squared error)
    D: int  # input size (vocabulary or channels)
    Q: int  # output size
    probe_batch: Callable[[Array], tuple[Array, Array]]  # key -> (x, y), the probed batch
    train_batch: Callable[[Array, Array], tuple[Array, Array, Array]]  # key, step -> x, y, mask
    val_batch: Callable[[Array], tuple[Array, Array]]  # key -> (x, y), the validation set
    steps_per_epoch: int | None  # timemachine: ceil(10000 / B); None for generated data
    vocab: list[str] | None  # index -> token, where tokens are characters
    # (key, start, n) -> batch(step): the batches train_batch gives for steps start..start+n-1,
    # doing the work they share once (the Time Machine draws each epoch's order once, not once
    # per step); None: train_batch per step
    chunk_batches: Callable[[Array, Array, int], Callable[[Array], tuple[Array, Array, Array]]
                            ] | None = None


def _fresh(batch: Callable[[Array], tuple[Array, Array]]):
    """Generated data: a fresh batch every step, all sequences weighted equally."""

    def train_batch(key, step):
        x, y = batch(jax.random.fold_in(key, step))
        return x, y, jnp.ones((x.shape[0],), jnp.float32)

    return train_batch


def make_task(name: str, batch_size: int, seq_len: int, vocab_size: int | None = None,
              path: str | None = None) -> Task:
    """The task called `name` with its batch functions (see the module docstring)."""
    if name == "random":
        batch = make_random_batch(vocab_size, batch_size, seq_len)
        return Task("tokens", vocab_size, vocab_size, batch, _fresh(batch), batch, None, None)
    if name == "adding":
        batch = make_adding_batch(batch_size, seq_len)
        return Task("regression", 2, 1, batch, _fresh(batch), batch, None, None)
    if name == "copy":
        batch = make_copy_batch(batch_size, seq_len)
        return Task("tokens", COPY_VOCAB, COPY_VOCAB, batch, _fresh(batch), batch, None, None)
    if name == "timemachine":
        corpus, vocab = load_timemachine(path)
        train, val = split_windows(windows(corpus, seq_len))
        steps_per_epoch = -(-len(train) // batch_size)
        table = jnp.asarray(train)
        val_x, val_y = jnp.asarray(val[:, :-1]), jnp.asarray(val[:, 1:])
        pad = steps_per_epoch * batch_size - len(train)

        def order(key, epoch):
            # d2l's epochs: each pass over the 10000 windows in a fresh random order, in
            # batches of B; the last batch of an epoch is padded and the padding masked out.
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), len(train))
            return jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])

        def batch_of(perm, b):
            idx = jax.lax.dynamic_slice(perm, (b * batch_size,), (batch_size,))
            w = table[idx]
            mask = (b * batch_size + jnp.arange(batch_size) < len(train)).astype(jnp.float32)
            return w[:, :-1], w[:, 1:], mask

        def train_batch(key, step):
            return batch_of(order(key, step // steps_per_epoch), step % steps_per_epoch)

        def chunk_batches(key, start, n):
            # Steps start..start+n-1 span at most (n - 1) // steps_per_epoch + 2 epochs; each
            # order is drawn once (a permutation is a sort: the costliest part of a batch), and
            # one the chunk does not reach is skipped (lax.cond on the step count, which is the
            # same for every network, so it stays a branch under vmap).
            first, last = start // steps_per_epoch, (start + n - 1) // steps_per_epoch
            shape = jax.eval_shape(order, key, first)
            orders = jnp.stack([
                jax.lax.cond(first + j <= last, lambda e: order(key, e),
                             lambda e: jnp.zeros(shape.shape, shape.dtype), first + j)
                for j in range((n - 1) // steps_per_epoch + 2)])

            def batch(step):
                return batch_of(orders[step // steps_per_epoch - first], step % steps_per_epoch)

            return batch

        return Task("tokens", len(vocab), len(vocab), make_window_batch(train, batch_size),
                    train_batch, lambda key: (val_x, val_y), steps_per_epoch, vocab,
                    chunk_batches)
    raise ValueError(f"task={name!r} is unknown; allowed: {list(TASKS)}")
