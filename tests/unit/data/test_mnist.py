"""MNIST IDX parsing and the tutorial's normalisation, on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bplab.data import mnist
from bplab.data.mnist import MnistPreprocess
from bplab.errors import DataError


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2048 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_split(raw: Path, prefix: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return images, labels


def test_normalize_matches_the_tutorial_data_tf() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)

    def data_tf(x):  # seed 000, section 2.4.5, per sample
        x = np.array(x, dtype="float32") / 255
        x = (x - 0.5) / 0.5
        return x.reshape((-1,))

    expected = np.stack([data_tf(image) for image in images])
    got = mnist.normalize(images, MnistPreprocess())
    assert got.dtype == np.float32 and got.shape == (5, 784)
    np.testing.assert_array_equal(got, expected)


def test_preprocess_shapes_dtypes_and_limits(tmp_path: Path) -> None:
    images, labels = write_split(tmp_path, "train", 12)
    write_split(tmp_path, "t10k", 4, seed=1)
    prepared = mnist.preprocess(tmp_path, MnistPreprocess(train_limit=10, val_size=0.2))
    x, y = prepared.splits["train"]
    x_val, y_val = prepared.splits["val"]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((8, 784), np.float32, (8,), np.int64)
    assert (x_val.shape, y_val.dtype) == ((2, 784), np.int64)
    # The validation rows are carved from the first 10 (train_limit), never from the rows left out.
    assert sorted([*y, *y_val]) == sorted(labels[:10])
    assert x.min() >= -1 and x.max() <= 1
    assert prepared.splits["test"][0].shape == (4, 784)
    assert prepared.transform["mean"] == 0.5 and prepared.transform["std"] == 0.5


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    write_split(tmp_path, "train", 3)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated or padded"):
        mnist.load_split(tmp_path, "train")


def test_wrong_magic_and_missing_file_are_named(tmp_path: Path) -> None:
    write_split(tmp_path, "train", 3)
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an IDX file with magic number 2049"):
        mnist.load_split(tmp_path, "train")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: file is missing"):
        mnist.load_split(tmp_path, "test")


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    write_split(tmp_path, "train", 3)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        mnist.load_split(tmp_path, "train")
