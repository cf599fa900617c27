"""Tasks: where the probed token batches come from.

- `random`: i.i.d. uniform tokens; targets are the next tokens.
- `timemachine`: d2l's character language model on H. G. Wells' The Time Machine.
- `adding`: the adding problem (Le et al. 2015; Arjovsky et al. 2016).
- `copy`: the copy-memory problem (Arjovsky et al. 2016).
- `selective_copy`: the selective copying task (Gu & Dao 2023, Mamba, Section 3.1).
- `smnist`, `psmnist`: pixel-by-pixel MNIST (Le et al. 2015), and with its pixels in one
  fixed random order (Arjovsky et al. 2016).
"""

import hashlib
import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.baselines import COPY_LENGTH, COPY_SYMBOLS  # data symbols 1..8; to memorize
from rnnjax.core.datafiles import DataError, cache_dir, read_regular_file, write_atomic
from rnnjax.core.files import file_sha1
from rnnjax.core.mnist import (
    MNIST_CLASSES,
    MNIST_PIXELS,
    MNIST_TASKS,
    load_mnist,
    make_mnist_batch,
    psmnist_permutation,
)

TASKS = ("random", "timemachine", "adding", "copy", "selective_copy", "smnist", "psmnist")

TIMEMACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIMEMACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIMEMACHINE_FILE = "timemachine.txt"


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


def make_selective_copy_batch(batch_size: int, seq_len: int, tokens: int, symbols: int
                              ) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)` for the selective copying task of Gu & Dao (2023, Mamba,
    Section 3.1).

    Input: `seq_len` steps, blank (0) but for `tokens` data symbols, each uniform over
    1..`symbols`, at distinct positions drawn uniformly (so the gaps between them vary, unlike
    the copy task's fixed delay, and the model must select what to keep), then `tokens` marker
    steps (`symbols + 1`): `seq_len + tokens` steps. Target: blanks at the input steps, then the
    data symbols in the order they came. Scored like `task=copy`, by the cross-entropy over all
    steps; loss_at=last scores the last symbol alone. A memoryless predictor (blank, then
    uniform over the symbols) has cross-entropy tokens log(symbols) / (seq_len + tokens) per
    step (`rnnjax.core.baselines.memoryless_baseline`).

    Returns:
      x, y: (B, seq_len + tokens) int32 over a vocabulary of `symbols + 2`.
    """

    def batch(key):
        k_pos, k_data = jax.random.split(key)
        # the first `tokens` entries of a uniform permutation: a uniform set of distinct
        # positions, sorted so that the symbols keep the order the targets ask for
        perms = jax.vmap(jax.random.permutation, (0, None))(
            jax.random.split(k_pos, batch_size), seq_len)
        pos = jnp.sort(perms[:, :tokens], axis=1)  # (B, K)
        data = jax.random.randint(k_data, (batch_size, tokens), 1, symbols + 1, dtype=jnp.int32)
        inputs = jnp.zeros((batch_size, seq_len), jnp.int32)
        inputs = inputs.at[jnp.arange(batch_size)[:, None], pos].set(data)
        marks = jnp.full((batch_size, tokens), symbols + 1, jnp.int32)
        blanks = jnp.zeros((batch_size, seq_len), jnp.int32)
        return (jnp.concatenate([inputs, marks], axis=1),
                jnp.concatenate([blanks, data], axis=1))

    return batch


def last_steps_accuracy(k: int) -> Callable[[Array, Array], Array]:
    """Builds `accuracy(logits, y)`: the fraction of the targets of the last `k` steps that the
    outputs' argmax gets exactly (selective copying: the `tokens` symbols recalled; MNIST: the
    class read at the last step). A tie goes to the first class, as argmax breaks it.

    Returns:
      accuracy(logits (T, B, Q), y (B, T) int) -> () in [0, 1].
    """

    def accuracy(logits, y):
        pred = jnp.argmax(logits[-k:], axis=-1)  # (k, B)
        return jnp.mean((pred == y[:, -k:].T).astype(jnp.float32))

    return accuracy


# ----------------------------------------------------------------------------- time machine


def sha1_of(path: Path, key: str = "data file") -> str:
    """Hex sha1 of a data file's bytes (read as `read_data_file` does: a regular file of at
    most 1 GiB, else DataError naming `key`)."""
    return file_sha1(path, lambda p: read_data_file(p, key))  # hashed once per version


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
    return write_atomic(dest, data)


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


def read_data_file(p: Path, key: str) -> bytes:
    """The bytes of a regular file of at most MAX_TEXT_BYTES (1 GiB) (`read_regular_file`:
    a FIFO, a device or a directory is refused without being read).

    Raises:
      DataError: one line naming `key` and what is allowed.
    """
    return read_regular_file(p, key, MAX_TEXT_BYTES, "text file")


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
    # (outputs (T, B, Q), y) -> () the fraction of answers exactly right, for a task that has
    # answers (selective_copy, smnist, psmnist; `last_steps_accuracy`); None: no accuracy
    accuracy: Callable[[Array, Array], Array] | None = None


SELECTIVE_COPY_TOKENS = 8  # task.tokens, the symbols to memorize (Mamba: 16)
SELECTIVE_COPY_SYMBOLS = 8  # task.symbols, the data symbols 1..symbols (Mamba: 16)


class TaskShape(NamedTuple):
    """A task's sizes, known from its options without building it (memory planning)."""

    T: int  # timesteps backpropagated through
    D: int  # input size (vocabulary or channels)
    Q: int  # output size


def task_shape(name: str, seq_len: int, vocab_size: int | None = None,
               tokens: int | None = None, symbols: int | None = None) -> TaskShape:
    """The sizes `make_task` gives the task `name` (timemachine: d2l's 28 tokens)."""
    tokens = SELECTIVE_COPY_TOKENS if tokens is None else tokens
    symbols = SELECTIVE_COPY_SYMBOLS if symbols is None else symbols
    return {"random": TaskShape(seq_len, vocab_size, vocab_size),
            "timemachine": TaskShape(seq_len, 28, 28),
            "adding": TaskShape(seq_len, 2, 1),
            "copy": TaskShape(seq_len + 2 * COPY_LENGTH, COPY_VOCAB, COPY_VOCAB),
            "selective_copy": TaskShape(seq_len + tokens, symbols + 2, symbols + 2),
            "smnist": TaskShape(MNIST_PIXELS, 1, MNIST_CLASSES),
            "psmnist": TaskShape(MNIST_PIXELS, 1, MNIST_CLASSES)}[name]


def task_option_error(name: str, seq_len: int, tokens: int | None = None,
                      symbols: int | None = None) -> str | None:
    """The one-line error for a task's sizes that it cannot take, else None: selective_copy's
    `tokens` (1..seq_len: distinct input steps) and `symbols` (>= 1); MNIST's seq_len (784)."""
    if name == "selective_copy":
        if tokens is not None and tokens < 1:
            return f"task.tokens={tokens} is invalid: must be an integer >= 1"
        if symbols is not None and symbols < 1:
            return f"task.symbols={symbols} is invalid: must be an integer >= 1"
        tokens = SELECTIVE_COPY_TOKENS if tokens is None else tokens
        if tokens > seq_len:
            return (f"task.tokens={tokens} is invalid with seq_len={seq_len}: the symbols take "
                    f"distinct steps among the seq_len input steps; allowed: 1 to {seq_len}")
    if name in MNIST_TASKS and seq_len != MNIST_PIXELS:
        return (f"seq_len={seq_len} is invalid for task={name}: it has {MNIST_PIXELS} steps "
                f"(28x28 pixels, one per step); set seq_len={MNIST_PIXELS}")
    return None


def _fresh(batch: Callable[[Array], tuple[Array, Array]]):
    """Generated data: a fresh batch every step, all sequences weighted equally."""

    def train_batch(key, step):
        x, y = batch(jax.random.fold_in(key, step))
        return x, y, jnp.ones((x.shape[0],), jnp.float32)

    return train_batch


def make_mnist_task(name: str, batch_size: int, path: str | None = None) -> Task:
    """smnist or psmnist (`name`): training and probed batches from the training images, the
    validation batch from the test images; the class is scored at the last step."""
    data = load_mnist(path, name)
    train_images, test_images = data.train_images, data.test_images
    if name == "psmnist":  # permuted once here, not in every batch
        perm = psmnist_permutation()
        train_images, test_images = train_images[:, perm], test_images[:, perm]
    batch = make_mnist_batch(train_images, data.train_labels, batch_size)
    return Task("tokens", 1, MNIST_CLASSES, batch, _fresh(batch),
                make_mnist_batch(test_images, data.test_labels, batch_size), None, None,
                accuracy=last_steps_accuracy(1))


def make_task(name: str, batch_size: int, seq_len: int, vocab_size: int | None = None,
              path: str | None = None, tokens: int | None = None, symbols: int | None = None
              ) -> Task:
    """The task called `name` with its batch functions (see the module docstring).

    Args:
      tokens, symbols: selective_copy's symbols to memorize and data symbols (None: 8 each).

    Raises:
      ValueError: an unknown task, or sizes it cannot take (`task_option_error`).
    """
    error = task_option_error(name, seq_len, tokens, symbols)
    if error:
        raise ValueError(error)
    if name == "random":
        batch = make_random_batch(vocab_size, batch_size, seq_len)
        return Task("tokens", vocab_size, vocab_size, batch, _fresh(batch), batch, None, None)
    if name == "adding":
        batch = make_adding_batch(batch_size, seq_len)
        return Task("regression", 2, 1, batch, _fresh(batch), batch, None, None)
    if name == "copy":
        batch = make_copy_batch(batch_size, seq_len)
        return Task("tokens", COPY_VOCAB, COPY_VOCAB, batch, _fresh(batch), batch, None, None)
    if name == "selective_copy":
        tokens = SELECTIVE_COPY_TOKENS if tokens is None else tokens
        symbols = SELECTIVE_COPY_SYMBOLS if symbols is None else symbols
        batch = make_selective_copy_batch(batch_size, seq_len, tokens, symbols)
        return Task("tokens", symbols + 2, symbols + 2, batch, _fresh(batch), batch, None, None,
                    accuracy=last_steps_accuracy(tokens))
    if name in MNIST_TASKS:
        return make_mnist_task(name, batch_size, path)
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
