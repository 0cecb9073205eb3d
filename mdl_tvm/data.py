"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (60k train / 10k test).

The IDX files live in `/usr/share/datasets/fashion-mnist/`; `MDL_TVM_FASHION_MNIST`
points elsewhere. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from mdl_tvm.core.errors import DatasetMissingError, ModelFormatError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the training images, pixel values in [0, 1]

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_dir() -> str:
    return os.environ.get("MDL_TVM_FASHION_MNIST", DEFAULT_DIR)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            magic, = struct.unpack(">I", f.read(4))
            ndim = magic & 0xFF
            if magic >> 8 != 0x08 or ndim not in (1, 3):
                raise ModelFormatError(f"{path} is not an unsigned-byte IDX file")
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as err:
        raise ModelFormatError(f"cannot read {path}: {err}") from err
    if data.size != int(np.prod(dims)):
        raise ModelFormatError(f"{path} is truncated: {data.size} of {np.prod(dims)} bytes")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "train", normalize: bool = True, limit: int | None = None):
    """Return ``(images, labels)``: float32 N x 1 x 28 x 28 (normalised) and int64 N.

    Raises
    ------
    DatasetMissingError
        When the Debian package is not installed; the message says how to install it.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    directory = data_dir()
    paths = [os.path.join(directory, name) for name in _FILES[split]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST is not installed ({missing[0]} is missing); install it with "
            "`apt-get install dataset-fashion-mnist` (run scripts/setup.sh), or set "
            "MDL_TVM_FASHION_MNIST to a folder holding the four IDX files"
        )
    images, labels = (_read_idx(p) for p in paths)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.astype(np.float32)[:, None] / 255.0
    if normalize:
        x = (x - MEAN) / STD
    return x.astype(np.float32), labels.astype(np.int64)
