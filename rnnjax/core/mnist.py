"""MNIST's files for task=smnist and task=psmnist: where they are found (or downloaded once),
their md5 checks, LeCun's idx format parsed with numpy, psmnist's fixed pixel order, and the
batches of images read pixel by pixel."""

import gzip
import hashlib
import io
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

from rnnjax.core.datafiles import DataError, cache_dir, read_regular_file, write_atomic
from rnnjax.core.files import file_sha1

MNIST_TASKS = ("smnist", "psmnist")
MNIST_PIXELS = 28 * 28  # a sequence's steps: one pixel each, row by row
MNIST_CLASSES = 10
MNIST_IMAGES = 70_000  # 60000 training and 10000 test images: what a job holds in memory
MNIST_DIR = "mnist"  # the folder under $RNNJAX_DATA and the cache
# torchvision's mirror first, then the original site (each file is the same under both)
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")
# the four files and their published md5s (torchvision's); train first, then test
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# A folder of other files in the same format (a sample, a subset) lists their md5s in this
# file, as `md5sum` writes them ("<md5>  <name>" per line); they are checked instead.
MNIST_MANIFEST = "md5sums.txt"
MAX_IDX_BYTES = 2**27  # an idx file larger than 128 MiB unpacked is refused (MNIST's: 47 MB)
MAX_FILE_BYTES = 2**26  # a file or download larger than 64 MiB is refused (MNIST's: 9.9 MB)
# psmnist's pixel order: NumPy's legacy RandomState(PSMNIST_SEED).permutation(784), a stream
# NumPy keeps fixed across versions and machines (NEP 19); the test pins its sha1.
PSMNIST_SEED = 1234


class MnistData(NamedTuple):
    """MNIST as the tasks read it: images flattened row by row, raw bytes."""

    train_images: np.ndarray  # (N, 784) uint8, 0..255
    train_labels: np.ndarray  # (N,) int32, 0..9
    test_images: np.ndarray  # (M, 784) uint8
    test_labels: np.ndarray  # (M,) int32


def _read(p: Path, key: str) -> bytes:
    """A file's bytes, refused in one line naming `key` unless it is a regular file of at most
    MAX_FILE_BYTES (`read_regular_file`)."""
    return read_regular_file(p, key, MAX_FILE_BYTES)


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _mnist_names() -> str:
    return ", ".join(MNIST_MD5)


def mnist_md5s(folder: Path, key: str) -> dict[str, str]:
    """The md5 each MNIST file in `folder` must have: the published ones, or those its
    MNIST_MANIFEST lists (a sample's).

    Raises:
      DataError: the manifest is unreadable or lacks one of the four files.
    """
    manifest = folder / MNIST_MANIFEST
    if not manifest.exists():
        return dict(MNIST_MD5)
    listed = {}
    for line in _read(manifest, key).decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch("[0-9a-f]{32}", parts[0]):
            listed[parts[1].lstrip("*")] = parts[0]  # md5sum marks binary mode with '*'
    for name in MNIST_MD5:
        if name not in listed:
            raise DataError(f"{key}: {str(manifest)!r} lists no md5 for {name}; it must list "
                            f"all four MNIST files ({_mnist_names()}) as md5sum writes them")
    return {name: listed[name] for name in MNIST_MD5}


def check_mnist_folder(folder: Path, key: str) -> None:
    """Raises DataError naming `key` unless `folder` holds the four MNIST files, each with the
    md5 it must have (`mnist_md5s`)."""
    if not folder.is_dir():
        raise DataError(f"{key}: {str(folder)!r} is not a folder; allowed: a folder holding the "
                        f"four MNIST files ({_mnist_names()})")
    for name in MNIST_MD5:
        if not (folder / name).exists():
            raise DataError(f"{key}: {str(folder)!r} has no {name}; put the four MNIST files "
                            f"({_mnist_names()}) there, as {MNIST_MIRRORS[0]} serves them")
    want = mnist_md5s(folder, key)
    for name in MNIST_MD5:
        p = folder / name
        got = hashlib.md5(_read(p, key)).hexdigest()
        if got != want[name]:
            source = (f"its line in {MNIST_MANIFEST}" if (folder / MNIST_MANIFEST).exists() else
                      f"the published file's; a sample lists its own md5s in {MNIST_MANIFEST}")
            raise DataError(f"{key}: {str(p)!r} has md5 {got}, expected {want[name]} ({source})")


def download_mnist(name: str, dest: Path, task: str = "smnist") -> Path:
    """Downloads the MNIST file `name` to `dest` from the first of MNIST_MIRRORS that serves it
    with its published md5, atomically.

    Raises:
      DataError: one line naming every mirror's failure and where to put the files instead.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                data = r.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            failures.append(f"{url}: {_one_line(e)}")
            continue
        got = hashlib.md5(data).hexdigest()
        if got == MNIST_MD5[name]:
            return write_atomic(dest, data)
        failures.append(f"{url} has md5 {got}, expected {MNIST_MD5[name]}")
    raise DataError(f"task={task}: cannot download {name} ({'; '.join(failures)}); put the four "
                    f"MNIST files ({_mnist_names()}) in {dest.parent} or $RNNJAX_DATA/{MNIST_DIR}"
                    f", or set task.path=/folder/holding/them")


def mnist_folder(path: str | None = None, task: str = "smnist") -> Path:
    """Finds the folder of the MNIST files: `path`, else $RNNJAX_DATA/mnist where that folder
    exists, else the cache (downloading the files it lacks, each checked against its published
    md5). The files of `path` and $RNNJAX_DATA/mnist are checked as `check_mnist_folder` says.

    Raises:
      DataError: with a one-line message saying where to put the files.
    """
    if path:
        folder = Path(path).expanduser()
        check_mnist_folder(folder, "task.path")
        return folder
    if os.environ.get("RNNJAX_DATA"):
        folder = Path(os.environ["RNNJAX_DATA"]).expanduser() / MNIST_DIR
        if folder.is_dir():
            check_mnist_folder(folder, "$RNNJAX_DATA")
            return folder
    folder = cache_dir() / MNIST_DIR
    for name, md5 in MNIST_MD5.items():
        p = folder / name
        if not (p.is_file() and hashlib.md5(_read(p, "the cache")).hexdigest() == md5):
            download_mnist(name, p, task)
    return folder


def mnist_sha1(folder: Path) -> str:
    """One sha1 for the four files of a folder (of their sha1s, in MNIST_MD5's order): what a
    job's provenance records and resume compares."""
    lines = "".join(f"{file_sha1(folder / name, lambda p: _read(p, str(folder)))}  {name}\n"
                    for name in MNIST_MD5)
    return hashlib.sha1(lines.encode()).hexdigest()


def read_idx(data: bytes, name: str) -> np.ndarray:
    """An array in LeCun's idx format, from the bytes of a gzipped file: magic 0x00000800 + the
    number of dimensions (a byte), each dimension a big-endian uint32, then the unsigned bytes.

    Raises:
      DataError: one line naming the file and what is wrong with it.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as e:
        raise DataError(f"{name}: not a gzipped idx file ({_one_line(e)})") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataError(f"{name}: larger than {MAX_IDX_BYTES} bytes unpacked")
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise DataError(f"{name}: not an idx file of unsigned bytes (its magic number is "
                        f"{raw[:4].hex() or 'missing'}, expected 000008 and the dimensions)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{name}: the idx header is cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) - head != int(np.prod(dims, dtype=np.int64)):
        raise DataError(f"{name}: {len(raw) - head} bytes of data, but its header says "
                        f"{'x'.join(map(str, dims))}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _images_and_labels(images: np.ndarray, labels: np.ndarray, names: tuple[str, str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) images and (N,) int32 labels, checked: N >= 1 images of 28x28, one label 0..9
    each."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
        raise DataError(f"{names[0]}: {images.shape[0]} images of shape {images.shape[1:]}, "
                        "expected at least one of (28, 28)")
    if labels.shape != images.shape[:1]:
        raise DataError(f"{names[1]}: {labels.shape} labels for {images.shape[0]} images in "
                        f"{names[0]}")
    if labels.size and labels.max() >= MNIST_CLASSES:
        raise DataError(f"{names[1]}: label {labels.max()}, expected 0..9")
    return images.reshape(len(images), MNIST_PIXELS), labels.astype(np.int32)


def load_mnist(path: str | None = None, task: str = "smnist") -> MnistData:
    """MNIST's training and test sets from the folder `mnist_folder` finds, each file read once,
    md5-checked and parsed (`read_idx`)."""
    folder = mnist_folder(path, task)
    key = "task.path" if path else str(folder)
    want = mnist_md5s(folder, key)
    arrays = []
    for name in MNIST_MD5:
        data = _read(folder / name, key)
        if hashlib.md5(data).hexdigest() != want[name]:  # changed since mnist_folder looked
            check_mnist_folder(folder, key)
        arrays.append(read_idx(data, str(folder / name)))
    names = list(MNIST_MD5)
    train = _images_and_labels(arrays[0], arrays[1], (names[0], names[1]))
    test = _images_and_labels(arrays[2], arrays[3], (names[2], names[3]))
    return MnistData(*train, *test)


def psmnist_permutation() -> np.ndarray:
    """psmnist's fixed order of the 784 pixels: step t shows pixel perm[t] (see
    PSMNIST_SEED)."""
    return np.random.RandomState(PSMNIST_SEED).permutation(MNIST_PIXELS)


def make_mnist_batch(images: np.ndarray, labels: np.ndarray, batch_size: int
                     ) -> Callable[[Array], tuple[Array, Array]]:
    """Builds `batch(key) -> (x, y)` sampling `batch_size` images uniformly (with replacement).

    Returns:
      x: (B, 784, 1) float32 pixels in [0, 1], one per step; y: (B, 784) int32, the label at
      every step (the loss reads the last: the class is scored at the last step).
    """
    table = jnp.asarray(images)  # uint8 on the device: a quarter of float32's memory
    classes = jnp.asarray(labels)

    def batch(key):
        idx = jax.random.randint(key, (batch_size,), 0, table.shape[0])
        x = table[idx].astype(jnp.float32)[..., None] / 255.0
        y = jnp.broadcast_to(classes[idx][:, None], (batch_size, table.shape[1]))
        return x, y

    return batch
