import functools
import os
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from rnnjax.core import tasks
from rnnjax.core.tasks import (
    TIMEMACHINE_SHA1,
    DataError,
    build_vocab,
    load_timemachine,
    make_random_batch,
    make_window_batch,
    preprocess,
    timemachine_path,
    windows,
)


def test_random_batch_targets_are_next_tokens(key):
    x, y = make_random_batch(28, 16, 50)(key)
    assert x.shape == y.shape == (16, 50)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert int(x.min()) >= 0 and int(x.max()) <= 27
    counts = np.bincount(np.asarray(x).ravel(), minlength=28)
    assert (counts > 0).all()  # 800 draws over 28 tokens: all appear


def test_preprocessing_is_d2ls():
    text = "The Time-Machine,\n by H. G. Wells [1898]"
    assert preprocess(text) == "the time machine by h g wells "
    assert build_vocab(list("ab a")) == [" ", "<unk>", "a", "b"]


def test_timemachine_vocab_and_sha1(timemachine_file):
    assert tasks.sha1_of(timemachine_file) == TIMEMACHINE_SHA1
    corpus, vocab = load_timemachine(str(timemachine_file))
    assert len(vocab) == 28
    assert vocab[:2] == [" ", "<unk>"] and vocab[2:] == [chr(c) for c in range(97, 123)]
    assert corpus.dtype == np.int32 and len(corpus) > 170_000
    text = "".join(vocab[i] for i in corpus[:19])
    assert text == "the time machine by"
    assert 1 not in set(corpus.tolist())  # nothing maps to <unk>


def test_windows_match_d2l(timemachine_file):
    corpus, _ = load_timemachine(str(timemachine_file))
    w = windows(corpus, 32)
    assert w.shape == (len(corpus) - 32, 33)
    np.testing.assert_array_equal(w[5], corpus[5:38])
    x, y = make_window_batch(w, 8)(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(x)[:, 1:], np.asarray(y)[:, :-1])
    with pytest.raises(DataError, match="seq_len"):
        windows(corpus[:10], 10)


def test_path_resolution_order(timemachine_file, tmp_path, monkeypatch):
    assert timemachine_path(str(timemachine_file)) == timemachine_file
    monkeypatch.setenv("RNNJAX_DATA", str(timemachine_file.parent))
    assert timemachine_path() == timemachine_file
    monkeypatch.setenv("RNNJAX_DATA", str(tmp_path))
    with pytest.raises(DataError, match="RNNJAX_DATA"):
        timemachine_path()


def test_cached_copy_is_used_and_download_is_sha1_checked(timemachine_file, monkeypatch):
    payload = timemachine_file.read_bytes()

    class Response:
        def __init__(self, data):
            self.data = data

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    calls = []
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: calls.append(url) or Response(b"tampered"))
    with pytest.raises(DataError, match="sha1"):
        timemachine_path()
    assert not (tasks.cache_dir() / "timemachine.txt").exists()  # nothing half-written

    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: calls.append(url) or Response(payload))
    p = timemachine_path()
    assert tasks.sha1_of(p) == TIMEMACHINE_SHA1 and p.parent == tasks.cache_dir()
    timemachine_path()  # second call: served from the cache
    assert calls == [tasks.TIMEMACHINE_URL] * 2


def test_offline_without_file_says_where_to_put_it(monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        timemachine_path()
    msg = str(e.value)
    assert "\n" not in msg and "RNNJAX_DATA" in msg and "task.path" in msg
    assert str(tasks.cache_dir()) in msg


def test_unreadable_or_binary_file(tmp_path):
    with pytest.raises(DataError, match="task.path"):
        timemachine_path(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="UTF-8"):
        timemachine_path(str(bad))
    with pytest.raises(DataError, match="task.path"):
        timemachine_path(str(tmp_path))  # a directory


def _within(seconds, f):
    """f() in a daemon thread: its result or exception, or TimeoutError if it blocks (a FIFO
    read without a writer would block forever)."""
    box = {}

    def target():
        try:
            box["value"] = f()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"still blocked after {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "dir"])
def test_only_regular_files_are_read(tmp_path, special):
    if special == "fifo":
        special = tmp_path / "fifo"
        os.mkfifo(special)
    elif special == "dir":
        special = tmp_path
    elif not Path(special).exists():
        pytest.skip(f"{special} does not exist here")
    with pytest.raises(DataError) as e:
        _within(10, lambda: timemachine_path(str(special)))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task.path: ") and "regular text file" in msg


def test_data_files_over_the_size_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "MAX_TEXT_BYTES", 1000)
    ok, big = tmp_path / "ok.txt", tmp_path / "big.txt"
    ok.write_text("a" * 1000)
    big.write_text("a" * 1001)
    assert tasks.read_text(ok, "task.path") == "a" * 1000
    with pytest.raises(DataError, match="larger than"):
        timemachine_path(str(big))


@functools.cache
def timemachine_task(path):
    """The timemachine task of 3000 windows of 8 tokens, and its train_batch jitted (one
    program for every step and every test, where eager each operation compiled its own)."""
    task = tasks.make_task("timemachine", 3000, 8, path=path)
    return task, jax.jit(task.train_batch)


def test_an_epoch_visits_every_training_window_once(timemachine_file):
    """d2l's epochs: the steps of one epoch draw the 10000 training windows in one random
    order, each exactly once (the last batch's padding masked out), a new order each epoch."""
    task, train_batch = timemachine_task(str(timemachine_file))
    wins = windows(load_timemachine(str(timemachine_file))[0], 8)[:tasks.NUM_TRAIN]
    want = Counter(w.tobytes() for w in wins)  # a window may occur more than once in the text
    key = jax.random.key(3)
    epochs = []
    for e in range(2):
        seen = []
        for b in range(task.steps_per_epoch):  # 4 steps: 3000 + 3000 + 3000 + 1000 (padded)
            x, y, mask = train_batch(key, e * task.steps_per_epoch + b)
            w = np.concatenate([np.asarray(x), np.asarray(y)[:, -1:]], axis=1)
            seen += [r.tobytes() for r in w[np.asarray(mask) == 1]]
        assert Counter(seen) == want
        epochs.append(seen)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("n", [1, 3, 4, 9])
@pytest.mark.e2e
def test_chunk_batches_are_train_batches(timemachine_file, n):
    """A chunk's batches, drawn with each epoch's order once, are the per-step batches, for
    chunks inside one epoch and across two or more (4 steps per epoch here)."""
    task, train_batch = timemachine_task(str(timemachine_file))
    key = jax.random.key(4)
    chunk = jax.jit(lambda s: jax.vmap(task.chunk_batches(key, s, n))(s + jax.numpy.arange(n)))
    for start in (0, 1, 3, n, 5 * n + 2):
        got = [np.asarray(a) for a in chunk(start)]  # (n, ...) each
        for j in range(n):  # step start + j's batch
            want = train_batch(key, start + j)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a[j], np.asarray(b))
