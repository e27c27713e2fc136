"""The flower generator reproduces the tutorial's points exactly, and its files round-trip."""

from __future__ import annotations

import errno
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bplab.data import flower
from bplab.data.flower import FlowerDownload, FlowerPreprocess
from bplab.errors import DataError


def tutorial_flower() -> tuple[np.ndarray, np.ndarray]:
    """Seed 000, section 2.4.1, verbatim but for the plotting."""
    np.random.seed(1)
    m = 400
    N = int(m / 2)
    D = 2
    x = np.zeros((m, D))
    y = np.zeros((m, 1), dtype="uint8")
    a = 4
    for j in range(2):
        ix = range(N * j, N * (j + 1))
        t = np.linspace(j * 3.12, (j + 1) * 3.12, N) + np.random.randn(N) * 0.2
        r = a * np.sin(4 * t) + np.random.randn(N) * 0.2
        x[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[ix] = j
    return x, y


def test_generate_reproduces_the_tutorial_bit_for_bit() -> None:
    expected_x, expected_y = tutorial_flower()
    x, y = flower.generate(400, 4, 0.2, 1)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert y.dtype == np.uint8 and y.shape == (400, 1)


def test_test_split_is_unseen_and_balanced(tmp_path: Path) -> None:
    paths = flower.write_raw(tmp_path, FlowerDownload())
    x_train, _ = flower.read_split(paths["train"])
    x_test, y_test = flower.read_split(paths["test"])
    assert x_test.shape == (400, 2)
    assert not np.isin(x_test[:, 0], x_train[:, 0]).any()
    assert y_test.sum() == 200


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    paths = flower.write_raw(tmp_path, FlowerDownload())
    x, y = flower.read_split(paths["train"])
    expected_x, expected_y = tutorial_flower()
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (RLIMIT_FSIZE; SIGXFSZ,
    which would kill the process, ignored meanwhile)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_write_cut_short_leaves_the_previous_files_whole(tmp_path: Path) -> None:
    paths = flower.write_raw(tmp_path, FlowerDownload())
    before = {path: path.read_bytes() for path in paths.values()}
    bigger = FlowerDownload(n_points=4000, test_points=4000)  # ~160 kB per file, cut off at 64 kB
    with file_size_limit(64 * 1024), pytest.raises(OSError) as caught:
        flower.write_raw(tmp_path, bigger)
    assert caught.value.errno == errno.EFBIG
    assert {path: path.read_bytes() for path in paths.values()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(flower.SPLIT_FILES.values())  # no partial file left
    flower.write_raw(tmp_path, bigger)  # with room again, the same write succeeds
    assert len(flower.read_split(paths["train"])[0]) == 4000


def test_preprocess_gives_float32_tensors_and_optional_standardisation(tmp_path: Path) -> None:
    flower.write_raw(tmp_path, FlowerDownload())
    raw = flower.preprocess(tmp_path, FlowerPreprocess())
    x, y = raw.splits["train"]
    assert (x.dtype, x.shape, y.dtype, y.shape) == (np.float32, (360, 2), np.float32, (360, 1))
    assert raw.splits["val"][0].shape == (40, 2) and raw.splits["test"][0].shape == (400, 2)
    assert raw.transform == {"standardize": False, "validation": {"val_size": 0.1, "val_seed": 0, "n_train": 360,
                                                                  "n_val": 40}}
    scaled = flower.preprocess(tmp_path, FlowerPreprocess(standardize=True))
    xs, _ = scaled.splits["train"]
    # Fitted on the 360 training points alone: the validation points are as unseen as the test points.
    np.testing.assert_allclose(xs.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(xs.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(scaled.transform["mean"], x.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert abs(scaled.splits["val"][0].mean(axis=0)).max() > 1e-3


def test_malformed_csv_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "train.csv"
    bad.write_text("x1,x2,label\n0.1,0.2,1\n0.3,oops,0\n")
    with pytest.raises(DataError, match="train.csv"):
        flower.read_split(bad)
    bad.write_text("x1,x2,label\n0.1,0.2,7\n")
    with pytest.raises(DataError, match="labels 0/1"):
        flower.read_split(bad)
