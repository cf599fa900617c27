"""task=selective_copy, task=smnist and task=psmnist: the batches against what the tasks say,
the accuracy and the memoryless baseline on hand-made cases, the MNIST files (idx parser, md5
checks, mirrors, the offline message) on a small sample this file writes, and the options'
one-line errors. Tiny sizes: each batch function is compiled once."""

import functools
import gzip
import hashlib
import math
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from rnnjax.app.config import Config, TaskName
from rnnjax.app.progress import interval_rows, progress_line
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core import mnist, tasks
from rnnjax.core.baselines import memoryless_baseline
from rnnjax.core.datafiles import DataError, cache_dir
from rnnjax.core.losses import make_loss
from rnnjax.core.mnist import (
    MNIST_MD5,
    check_mnist_folder,
    load_mnist,
    mnist_folder,
    psmnist_permutation,
    read_idx,
)
from rnnjax.core.tasks import last_steps_accuracy, make_task, task_shape

B, L, K, S = 64, 12, 5, 3  # selective copy: sequences, input steps, symbols to recall, symbols


@functools.cache
def selective_copy(seed=0):
    """One batch of the selective copying task (B=64, seq_len=12, tokens=5, symbols=3)."""
    task = make_task("selective_copy", B, L, tokens=K, symbols=S)
    x, y = jax.jit(task.probe_batch)(jax.random.key(seed))
    return task, np.asarray(x), np.asarray(y)


def test_selective_copy_batch_is_the_task():
    task, x, y = selective_copy()
    assert x.shape == y.shape == (B, L + K) and x.dtype == y.dtype == np.int32
    assert (task.D, task.Q, task.kind) == (S + 2, S + 2, "tokens")
    assert (x[:, L:] == S + 1).all()  # the marker at every output step
    assert (y[:, :L] == 0).all()  # blank targets at the input steps
    for row_x, row_y in zip(x, y, strict=True):
        pos = np.flatnonzero(row_x[:L])  # increasing: the symbols' steps in order
        assert len(pos) == K  # K distinct steps (each symbol is >= 1, a blank 0)
        np.testing.assert_array_equal(row_x[pos], row_y[L:])  # recalled in the order they came
    assert x[:, :L].max() == S and x[:, :L][x[:, :L] > 0].min() == 1
    # positions vary, spread over all input steps (B * K = 320 draws over 12 steps)
    used = np.bincount(np.nonzero(x[:, :L])[1], minlength=L)
    assert (used > 0).all() and len({tuple(np.flatnonzero(r[:L])) for r in x}) > B // 2
    assert abs(used.mean() / B - K / L) < 1e-12 and used.max() / B < 0.75
    # every step may hold a symbol: tokens = seq_len fills them all
    x2, y2 = jax.jit(make_task("selective_copy", 2, 3, tokens=3, symbols=2).probe_batch)(
        jax.random.key(1))
    assert (np.asarray(x2)[:, :3] > 0).all() and (np.asarray(y2)[:, 3:] == x2[:, :3]).all()


def test_accuracy_on_a_hand_made_case():
    # T=3 steps, B=2 sequences, Q=3 classes; argmax per (t, b): t=1: [2, 0], t=2: [1, 1]
    logits = np.zeros((3, 2, 3), np.float32)
    logits[1, 0, 2] = logits[1, 1, 0] = logits[2, 0, 1] = logits[2, 1, 1] = 1.0
    y = np.array([[0, 2, 1], [0, 1, 0]], np.int32)  # (B, T): sequence 0 right, 1 wrong
    both = jax.jit(lambda o, t: (last_steps_accuracy(2)(o, t), last_steps_accuracy(1)(o, t)))
    assert [float(a) for a in both(logits, y)] == [0.5, 0.5]
    y[1, 2] = 1  # now sequence 1 is right at the last step
    assert [float(a) for a in both(logits, y)] == [0.75, 1.0]
    # the task's own: all K recalled symbols of every sequence
    task, x, yt = selective_copy()
    accuracy = jax.jit(task.accuracy)
    perfect = np.eye(S + 2, dtype=np.float32)[yt.T]  # (T, B, Q) one-hot
    assert float(accuracy(perfect, yt)) == 1.0
    perfect[-1, 0] = np.roll(perfect[-1, 0], 1)  # one symbol of B * K wrong
    assert float(accuracy(perfect, yt)) == pytest.approx(1 - 1 / (B * K))


def test_memoryless_baseline_is_the_loss_of_blank_then_uniform():
    _, _, y = selective_copy()
    T = L + K
    blank = np.where(np.arange(S + 2) == 0, 50.0, -50.0)  # certain of the blank
    uniform = np.where((np.arange(S + 2) >= 1) & (np.arange(S + 2) <= S), 0.0, -np.inf)
    logits = np.where((np.arange(T) >= L)[:, None, None], uniform, blank)
    logits = np.broadcast_to(logits, (T, B, S + 2))
    losses = jax.jit(lambda o, t: {at: make_loss("tokens", at)(o, t) for at in ("all", "last")})
    for loss_at, got in losses(logits, y).items():
        assert float(got) == pytest.approx(
            memoryless_baseline("selective_copy", T, loss_at, K, S), rel=1e-6)
    assert memoryless_baseline("selective_copy", 20) is None  # sizes unknown: no line
    assert memoryless_baseline("selective_copy", 20, "all", 4, 8) == 4 * math.log(8) / 20


def test_psmnist_permutation_is_fixed_and_a_bijection():
    p = psmnist_permutation()
    assert p.shape == (784,) and np.array_equal(np.sort(p), np.arange(784))
    assert (p != np.arange(784)).mean() > 0.99
    # pinned: the same order on every machine and NumPy version (RandomState's stream)
    assert hashlib.sha1(p.astype("<u2").tobytes()).hexdigest() == (
        "4e7afe3a7b9cbf2fdb0396630d354a174d354b17")
    assert p[:4].tolist() == [529, 511, 328, 133]


# ----------------------------------------------------------------------------- MNIST sample


def idx_bytes(a: np.ndarray) -> bytes:
    """`a` in the idx format of unsigned bytes, gzipped (as LeCun's files are)."""
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return gzip.compress(head + a.astype(np.uint8).tobytes())


def write_sample(folder: Path, manifest: bool = True) -> dict[str, np.ndarray]:
    """A tiny MNIST in `folder` (20 training and 6 test images), with its md5s in
    md5sums.txt; returns the arrays written, by file name."""
    rng = np.random.default_rng(0)
    arrays = dict(zip(MNIST_MD5, [rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20),
                                  rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)],
                      strict=True))
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, a in arrays.items():
        data = idx_bytes(a)
        (folder / name).write_bytes(data)
        lines.append(f"{hashlib.md5(data).hexdigest()}  {name}\n")
    if manifest:
        (folder / mnist.MNIST_MANIFEST).write_text("".join(lines))
    return arrays


@pytest.fixture
def sample(tmp_path):
    folder = tmp_path / "mnist"
    return folder, write_sample(folder)


def test_idx_parser_reads_the_sample(sample):
    folder, arrays = sample
    data = load_mnist(str(folder))
    names = list(MNIST_MD5)
    np.testing.assert_array_equal(data.train_images, arrays[names[0]].reshape(20, 784))
    np.testing.assert_array_equal(data.test_labels, arrays[names[3]])
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    for bad, what in ((b"not gzip", "not a gzipped idx file"),
                      (gzip.compress(b"\0\0\x0d\x01\0\0\0\x01x"), "magic number"),
                      (gzip.compress(b"\0\0\x08\x02\0\0\0\x02"), "header is cut short"),
                      (idx_bytes(np.zeros((2, 3)))[:-8], "Compressed file ended")):
        with pytest.raises(DataError, match=what) as e:
            read_idx(bad, "f.gz")
        assert "\n" not in str(e.value) and str(e.value).startswith("f.gz: ")
    with pytest.raises(DataError, match="5 bytes of data, but its header says 2x3"):
        read_idx(gzip.compress(b"\0\0\x08\x02\0\0\0\x02\0\0\0\x03" + bytes(5)), "f.gz")
    images, labels = np.zeros((2, 28, 28), np.uint8), np.array([0, 9], np.uint8)
    for bad_images, bad_labels, what in ((images[:, 1:], labels, "2 images of shape"),
                                         (images[:0], labels[:0], "0 images"),
                                         (images, labels[:1], "labels for 2 images"),
                                         (images, labels + 1, "label 10, expected 0..9")):
        with pytest.raises(DataError, match=what):
            mnist._images_and_labels(bad_images, bad_labels, ("i.gz", "l.gz"))


@functools.cache
def mnist_batches(path):
    """smnist's and psmnist's probed and validation batches of 8 images, one key each."""
    made = {name: make_task(name, 8, 784, path=path) for name in ("smnist", "psmnist")}
    batches = jax.jit(lambda k: {name: (t.probe_batch(k), t.val_batch(k))
                                 for name, t in made.items()})(jax.random.key(2))
    return {name: (made[name], batches[name]) for name in made}


def test_mnist_batches_are_the_images_pixel_by_pixel(sample):
    folder, arrays = sample
    train, test = (arrays[n].reshape(-1, 784) / 255.0 for n in list(MNIST_MD5)[::2])
    labels = arrays[list(MNIST_MD5)[1]], arrays[list(MNIST_MD5)[3]]
    batches = mnist_batches(str(folder))
    task, ((x, y), (vx, vy)) = batches["smnist"]
    assert (task.kind, task.D, task.Q) == ("tokens", 1, 10)
    assert x.shape == (8, 784, 1) and x.dtype == jnp.float32 and y.shape == (8, 784)
    assert y.dtype == jnp.int32 and (np.asarray(y) == np.asarray(y)[:, -1:]).all()
    for images, classes, xs, ys in ((train, labels[0], x, y), (test, labels[1], vx, vy)):
        for row, label in zip(np.asarray(xs)[..., 0], np.asarray(ys)[:, -1], strict=True):
            match = np.flatnonzero(np.abs(images - row).max(axis=1) < 1e-6)  # which image
            assert len(match) and classes[match[0]] == label
    _, ((px, py), _) = batches["psmnist"]  # the same key: the same images, pixels permuted
    np.testing.assert_array_equal(np.asarray(px)[..., 0],
                                  np.asarray(x)[:, psmnist_permutation(), 0])
    np.testing.assert_array_equal(py, y)
    assert float(jax.jit(task.accuracy)(np.eye(10)[np.asarray(y).T], y)) == 1.0


def test_task_shape_is_make_tasks(sample):
    folder, _ = sample
    task, x, _ = selective_copy()
    assert task_shape("selective_copy", L, tokens=K, symbols=S) == (x.shape[1], task.D, task.Q)
    t, ((xm, _), _) = mnist_batches(str(folder))["psmnist"]
    assert task_shape("psmnist", 784) == (xm.shape[1], t.D, t.Q)
    assert task_shape("selective_copy", 64) == (72, 10, 10)  # the defaults: 8 and 8
    assert task_shape("copy", 5) == (25, 10, 10)


def test_the_md5s_are_checked(sample, tmp_path):
    folder, _ = sample
    name = "t10k-labels-idx1-ubyte.gz"
    manifest = folder / mnist.MNIST_MANIFEST
    (folder / name).write_bytes(idx_bytes(np.zeros(6)))  # not the file the manifest lists
    with pytest.raises(DataError, match=f"{name}' has md5 .*its line in md5sums.txt") as e:
        load_mnist(str(folder))
    assert "\n" not in str(e.value) and str(e.value).startswith("task.path: ")
    manifest.unlink()  # without a manifest: the published md5s
    with pytest.raises(DataError, match=f"expected {MNIST_MD5['train-images-idx3-ubyte.gz']}"):
        check_mnist_folder(folder, "task.path")
    manifest.write_text("0" * 32 + "  train-images-idx3-ubyte.gz\n")
    with pytest.raises(DataError, match="lists no md5 for train-labels"):
        check_mnist_folder(folder, "task.path")
    (folder / name).unlink()
    manifest.unlink()
    with pytest.raises(DataError) as e:
        mnist_folder(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and f"has no {name}" in msg and all(n in msg for n in MNIST_MD5)
    with pytest.raises(DataError, match="is not a folder"):
        mnist_folder(str(tmp_path / "nowhere"))


class _Served:
    """urlopen's answer: `data` (read up to n bytes)."""

    def __init__(self, data):
        self.data = data

    def read(self, n=-1):
        return self.data if n < 0 else self.data[:n]

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_tries_the_mirrors_and_checks_md5(tmp_path, monkeypatch):
    """The first mirror fails, the second serves the files (a file:// mirror of the sample;
    their md5s stand in for the published ones); a tampered file is refused and nothing is
    left in the cache; the cache serves the next job without a download."""
    mirror = tmp_path / "mirror"
    write_sample(mirror, manifest=False)
    md5s = {n: hashlib.md5((mirror / n).read_bytes()).hexdigest() for n in MNIST_MD5}
    monkeypatch.setattr(mnist, "MNIST_MD5", md5s)
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (f"file://{tmp_path}/down/", f"file://{mirror}/"))
    calls = []
    real = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: calls.append(url) or real(url, timeout=timeout))
    folder = mnist_folder()
    assert folder == cache_dir() / "mnist" and len(calls) == 8  # 4 files x 2 mirrors
    assert {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in MNIST_MD5} == md5s
    assert mnist_folder() == folder and len(calls) == 8  # from the cache
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")  # fetched again
    assert mnist_folder() == folder and len(calls) == 10

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Served(b"tampered"))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        mnist_folder(task="psmnist")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task=psmnist: cannot download t10k-labels")
    assert msg.count("has md5 ") == 2 and "md5sum" not in msg
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n in MNIST_MD5
                                                              if n != "t10k-labels-idx1-ubyte.gz")


def test_provenance_records_the_folder_and_one_sha1_of_its_files(sample):
    from rnnjax.app.provenance import data_file

    folder, _ = sample

    def sha1(data):
        return hashlib.sha1(data).hexdigest()

    want = sha1("".join(f"{sha1((folder / n).read_bytes())}  {n}\n" for n in MNIST_MD5).encode())
    assert data_file("psmnist", str(folder)) == {"path": str(folder.resolve()), "sha1": want}
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.ones(6)))
    (folder / mnist.MNIST_MANIFEST).unlink()  # other data, no manifest: refused, not recorded
    with pytest.raises(DataError, match="md5"):
        data_file("smnist", str(folder))


def test_rnnjax_data_is_looked_at_first(sample, monkeypatch, tmp_path):
    folder, _ = sample
    monkeypatch.setenv("RNNJAX_DATA", str(folder.parent))
    assert mnist_folder() == folder
    monkeypatch.setenv("RNNJAX_DATA", str(tmp_path / "elsewhere"))  # no mnist/ there: the cache
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", ())
    with pytest.raises(DataError, match=str(cache_dir() / "mnist")):
        mnist_folder()


def test_offline_without_the_files_says_where_to_put_them(app, tmp_path, monkeypatch):
    """The command line: one line naming the folders and the files, exit not 0, nothing
    written."""

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    run = tmp_path / "run"
    r = app("task=smnist", "seq_len=784", f"hydra.run.dir={run}")
    assert r.code != 0 and not run.exists()
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnjax: error: task=smnist: cannot download")
    assert str(cache_dir() / "mnist") in lines[0] and "$RNNJAX_DATA/mnist" in lines[0]
    assert all(n in lines[0] for n in MNIST_MD5) and "task.path" in lines[0]


# ----------------------------------------------------------------------------- options


def _config(name, **kw) -> Config:
    cfg = Config()
    cfg.task.name = TaskName[name]
    cfg.task.vocab_size = None
    for key, value in kw.items():
        target = cfg.task if key in ("tokens", "symbols", "path", "vocab_size") else cfg
        setattr(target, key, value)
    return cfg


@pytest.mark.parametrize("name, kw, error", [
    ("selective_copy", {"tokens": 0}, "task.tokens=0 is invalid: must be an integer >= 1"),
    ("selective_copy", {"symbols": 0}, "task.symbols=0 is invalid: must be an integer >= 1"),
    ("selective_copy", {"tokens": 65}, "task.tokens=65 is invalid with seq_len=64: "),
    ("selective_copy", {"tokens": 9, "seq_len": 8}, "allowed: 1 to 8"),
    ("selective_copy", {"path": "x"}, "task.path is not a parameter of task=selective_copy"),
    ("selective_copy", {"vocab_size": 10}, "task.vocab_size is not a parameter"),
    ("copy", {"tokens": 4}, "task.tokens is not a parameter of task=copy"),
    ("smnist", {"symbols": 4}, "task.symbols is not a parameter of task=smnist"),
    ("smnist", {}, "seq_len=64 is invalid for task=smnist: it has 784 steps (28x28 pixels, "
                   "one per step); set seq_len=784"),
    ("psmnist", {"seq_len": 784, "path": "/nowhere"}, "task.path: '/nowhere' is not a folder"),
])
def test_bad_options_are_one_line(name, kw, error):
    with pytest.raises(ConfigError) as e:
        validate(_config(name, **kw))
    assert error in str(e.value) and "\n" not in str(e.value)


def test_good_options_and_the_yaml_defaults(sample):
    validate(_config("selective_copy", tokens=64, symbols=1))
    cfg = _config("psmnist", seq_len=784, path=str(sample[0]))
    cfg.probe.loss_at = type(cfg.probe.loss_at)["last"]
    validate(cfg)
    cfg.probe.loss_at = type(cfg.probe.loss_at)["all"]
    with pytest.raises(ConfigError, match="probe.loss_at=all is invalid for task=psmnist"):
        validate(cfg)
    yaml = OmegaConf.load(ROOT / "conf" / "task" / "selective_copy.yaml")
    assert (yaml.task.tokens, yaml.task.symbols, yaml.probe.loss_at) == (
        tasks.SELECTIVE_COPY_TOKENS, tasks.SELECTIVE_COPY_SYMBOLS, "all")
    for name in mnist.MNIST_TASKS:
        assert OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml").probe.loss_at == "last"
    with pytest.raises(ValueError, match="seq_len=10 is invalid for task=smnist"):
        make_task("smnist", 2, 10)


def test_val_accuracy_in_the_metrics_rows():
    class M:  # an interval's StepMetrics on the host: 2 seeds, 1 step
        loss = grad_norm = np.ones((2, 1))
        clipped = np.zeros((2, 1), bool)
        active = np.ones((2, 1), bool)

    rows = interval_rows([0, 1], 5, M, np.ones(2), np.array([True, False]), True,
                         np.array([0.25, 0.5]))
    assert rows[0]["val_accuracy"] == 0.25 and math.isnan(rows[1]["val_accuracy"])
    assert "val_accuracy" not in interval_rows([0], 5, M, np.ones(1), np.ones(1, bool), True)[0]
    line = progress_line({**rows[0], "val_accuracy": 0.25}, True)
    assert line.endswith("val accuracy 0.2500")
