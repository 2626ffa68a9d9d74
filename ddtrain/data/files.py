"""Readers of datasets kept on disk: IDX files (MNIST, Fashion-MNIST) and CIFAR-10 python batches.

They return raw numpy arrays (uint8 pixels, int64 labels); normalisation happens on the device in
datasets.py. Every missing or malformed file becomes a one-line UserError naming the file.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib

import numpy as np

from ddtrain.errors import UserError

# How the files are called in messages (singular; "s" is appended for several).
TITLES = {"mnist": "MNIST IDX file", "fashion_mnist": "Fashion-MNIST IDX file",
          "cifar10": "CIFAR-10 python-version batch file"}
# Folders below dataset.root where the files commonly live (torchvision and hand-made layouts).
SUBDIRS = {
    "mnist": ("MNIST/raw", "MNIST", "mnist"),
    "fashion_mnist": ("FashionMNIST/raw", "FashionMNIST", "fashion_mnist"),
    "cifar10": ("cifar-10-batches-py",),
}
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
NUM_CLASSES = 10


def _corrupt(name: str, path: str, root: str, detail: str) -> UserError:
    return UserError(f"dataset={name}: {path} is corrupt ({detail}); replace it with the original "
                     f"{TITLES[name]} under dataset.root={root} (no download at run time)")


def find_file(name: str, root: str, fname: str, allow_gz: bool) -> str:
    """Path of fname (or fname.gz) in root or one of the dataset's usual subfolders; UserError if absent."""
    for folder in (root, *(os.path.join(root, s) for s in SUBDIRS[name])):
        for cand in ((fname, fname + ".gz") if allow_gz else (fname,)):
            path = os.path.join(folder, cand)
            if os.path.isfile(path):
                return path
    suffix = "(.gz)" if allow_gz else ""
    looked = ", ".join(s + "/" for s in SUBDIRS[name])
    raise UserError(f"dataset={name}: missing {os.path.join(root, fname)}{suffix} under dataset.root={root} "
                    f"(also looked in {looked}); put the {TITLES[name]}s there (no download at run time)")


def _read_bytes(name: str, path: str, root: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise _corrupt(name, path, root, f"cannot read: {e}") from e


def read_idx(name: str, path: str, root: str, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file with ndim dimensions, validating magic, header and length."""
    raw = _read_bytes(name, path, root)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(name, path, root, f"{len(raw)} bytes, shorter than the {header}-byte IDX header")
    magic = int.from_bytes(raw[:4], "big")
    want = 0x800 | ndim  # 0x08 = unsigned byte data, low byte = number of dimensions
    if magic != want:
        raise _corrupt(name, path, root, f"IDX magic 0x{magic:08x}, expected 0x{want:08x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + size:
        raise _corrupt(name, path, root, f"{len(raw)} bytes, expected {header + size} for dims {dims}; truncated?")
    # copy: frombuffer on bytes is read-only, which torch.from_numpy warns about
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _check_labels(name: str, path: str, root: str, labels: np.ndarray, count: int, image_path: str) -> np.ndarray:
    if len(labels) != count:
        raise UserError(f"dataset={name}: {path} has {len(labels)} labels but {image_path} has {count} images; "
                        f"replace both with the original {TITLES[name]}s under dataset.root={root}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise _corrupt(name, path, root, f"labels outside 0..{NUM_CLASSES - 1}")
    return labels.astype(np.int64)


def load_idx(name: str, root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images (N,28,28) uint8, train labels int64, test images, test labels of an MNIST-style dataset."""
    paths = [find_file(name, root, f, allow_gz=True) for f in IDX_NAMES]
    out = []
    for img_path, lab_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = read_idx(name, img_path, root, ndim=3)
        if images.shape[1:] != (28, 28):
            raise _corrupt(name, img_path, root, f"images of {images.shape[1:]}, expected (28, 28)")
        labels = read_idx(name, lab_path, root, ndim=1)
        out += [images, _check_labels(name, lab_path, root, labels, len(images), img_path)]
    return out[0], out[1], out[2], out[3]


def _read_cifar_batch(path: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    name = "cifar10"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    except Exception as e:  # a damaged pickle can fail in many ways; all mean "replace the file"
        raise _corrupt(name, path, root, f"cannot unpickle a dict with b'data' and b'labels': "
                                         f"{type(e).__name__}: {e}".replace("\n", " ")) from e
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise _corrupt(name, path, root, f"b'data' is {got}, expected uint8 of shape (N, 3072)")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(name, path, root, "b'labels' is not a list of integers")
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major: exactly C,H,W
    return data.reshape(-1, 3, 32, 32), _check_labels(name, path, root, labels, len(data), path)


def load_cifar10(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images (N,3,32,32) uint8, train labels int64, test images, test labels of CIFAR-10."""
    paths = [find_file("cifar10", root, f, allow_gz=False) for f in (*CIFAR_TRAIN, CIFAR_TEST)]
    batches = [_read_cifar_batch(p, root) for p in paths]
    train_x = np.concatenate([b[0] for b in batches[:-1]])
    train_y = np.concatenate([b[1] for b in batches[:-1]])
    return train_x, train_y, batches[-1][0], batches[-1][1]
