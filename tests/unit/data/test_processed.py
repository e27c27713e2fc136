"""The processed format: atomic writes, and reads that reject wrong shapes and dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bplab.data import processed
from bplab.data.processed import Prepared
from bplab.errors import DataError


def sample() -> Prepared:
    rng = np.random.default_rng(0)
    return Prepared({
        "train": (rng.normal(size=(8, 3)).astype(np.float32), rng.integers(0, 2, 8).astype(np.int64)),
        "val": (rng.normal(size=(2, 3)).astype(np.float32), rng.integers(0, 2, 2).astype(np.int64)),
        "test": (rng.normal(size=(4, 3)).astype(np.float32), rng.integers(0, 2, 4).astype(np.int64)),
    }, {"mean": [0.0, 1.0, 2.0]})


def test_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "processed" / "toy"
    processed.save(sample(), out)
    loaded = processed.load(out)
    for split in processed.SPLITS:
        for got, want in zip(loaded.splits[split], sample().splits[split]):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
    assert loaded.transform == {"mean": [0.0, 1.0, 2.0]}
    assert sorted(p.name for p in out.iterdir()) == [
        "transform.json", "x_test.npy", "x_train.npy", "x_val.npy", "y_test.npy", "y_train.npy", "y_val.npy"]


def test_failed_save_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    processed.save(sample(), out)
    bad = Prepared({"train": (np.zeros((2, 3), np.float64), np.zeros(2, np.int64))})
    with pytest.raises(DataError, match="float32"):
        processed.save(bad, out)
    assert processed.load(out).splits["train"][0].shape == (8, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no staging directory left behind


@pytest.mark.parametrize(("name", "array", "message"), [
    ("x_train.npy", np.zeros((8, 3), np.float64), "x_train must be a 2-D float32 array"),
    ("x_train.npy", np.zeros((8, 2), np.float32), r"shape \[8, 2\] differs from \[8, 3\]"),
    ("y_test.npy", np.zeros((4, 2), np.float32), "shape"),
])
def test_wrong_shape_or_dtype_names_the_file(tmp_path: Path, name: str, array: np.ndarray, message: str) -> None:
    processed.save(sample(), tmp_path)
    np.save(tmp_path / name, array)
    with pytest.raises(DataError, match=message):
        processed.load(tmp_path)


def test_truncated_array_file_names_the_file(tmp_path: Path) -> None:
    processed.save(sample(), tmp_path)
    path = tmp_path / "x_train.npy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="x_train.npy: not a readable .npy array"):
        processed.load(tmp_path)


def test_missing_output_says_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="transform.json: missing; run the preprocess stage first"):
        processed.load(tmp_path)


def test_dataset_digest_covers_every_value_and_the_shape() -> None:
    x = np.arange(30000, dtype=np.float32).reshape(1000, 30)
    y = np.zeros(1000, dtype=np.int64)
    base = processed.content_digest(x, y)
    assert base == processed.content_digest(x.copy(), y.copy()) and len(base) == 16
    late = x.copy()
    late[-1, -1] += 1  # past the first 10000 values MLflow's own digest looks at
    assert processed.content_digest(late, y) != base
    assert processed.content_digest(x.reshape(500, 60), y) != base
    assert processed.content_digest(x.astype(np.float64), y) != base


def test_loaded_arrays_map_the_files_and_writes_stay_in_the_process(tmp_path: Path) -> None:
    processed.save(sample(), tmp_path)
    x, _ = processed.load(tmp_path).splits["train"]
    assert isinstance(x, np.memmap) and x.mode == "c"  # read as used, from the page cache
    x[0, 0] = 123.0  # training code may write (torch.from_numpy wants a writable array)...
    assert processed.load(tmp_path).splits["train"][0][0, 0] == sample().splits["train"][0][0, 0]  # ...not the file


@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf]])
def test_a_nan_or_infinite_value_anywhere_is_refused(tmp_path: Path, bad: list[float]) -> None:
    data = sample()
    x = data.splits["train"][0].copy()
    x.flat[-len(bad):] = bad
    with pytest.raises(DataError, match="x_train contains NaN or infinite values"):
        processed.save(Prepared({**data.splits, "train": (x, data.splits["train"][1])}), tmp_path)
    huge = np.full((8, 3), np.finfo(np.float32).max, np.float32)  # finite, however large: accepted
    processed.save(Prepared({**data.splits, "train": (huge, data.splits["train"][1])}), tmp_path)


def test_validation_rows_are_a_seeded_share_of_the_training_rows_in_their_order() -> None:
    from bplab.errors import ParamsError
    from bplab.params.fields import PreprocessParams

    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20)
    (x_train, y_train), (x_val, y_val), record = processed.carve_validation(x, y, PreprocessParams(val_size=0.25,
                                                                                                   val_seed=3), "k")
    assert (len(y_train), len(y_val)) == (15, 5) and record == {"val_size": 0.25, "val_seed": 3, "n_train": 15,
                                                               "n_val": 5}
    assert sorted([*y_train, *y_val]) == list(range(20))  # every row once, in one split or the other
    assert list(y_train) == sorted(y_train) and list(y_val) == sorted(y_val)  # the rows' own order
    np.testing.assert_array_equal(x_val[:, 0], y_val * 2)  # features stay with their targets
    again = processed.carve_validation(x, y, PreprocessParams(val_size=0.25, val_seed=3), "k")[1][1]
    other = processed.carve_validation(x, y, PreprocessParams(val_size=0.25, val_seed=4), "k")[1][1]
    assert list(again) == list(y_val) and list(other) != list(y_val)
    with pytest.raises(ParamsError, match=r"data.toy.preprocess.val_size: 0.01 of 20 training rows leaves 20 to "
                                          r"train on and 0 to validate on; each needs at least 1"):
        processed.carve_validation(x, y, PreprocessParams(val_size=0.01), "data.toy.preprocess")
