"""The tutorial's two-class "flower": generated from params, not downloaded."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field, field_validator, model_validator

from bplab import plots
from bplab.data.catalog import Champion, Dataset, Evaluation
from bplab.data.fetch import FetchedFile
from bplab.data.processed import Prepared, carve_validation
from bplab.errors import DataError
from bplab.outputs import write_text_atomic
from bplab.params.fields import NonNegativeFloat, PreprocessParams, Seed, Strict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
Points = Annotated[int, Field(gt=0, le=10_000_000)]  # 2-D points; more would not fit in memory as CSV text


class FlowerDownload(Strict):
    """Parameters of the tutorial's two-class flower generator."""

    n_points: Points = 400
    petals: Annotated[int, Field(gt=0, le=1000)] = 4
    noise: NonNegativeFloat = 0.2
    seed: Seed = 1
    test_points: Points = 400
    test_seed: Seed = 2

    @model_validator(mode="after")
    def _distinct_seeds(self) -> FlowerDownload:
        if self.seed == self.test_seed:
            raise ValueError("test_seed must differ from seed, or the test points repeat the training points")
        return self

    @field_validator("n_points", "test_points")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even: the flower has two classes of equal size")
        return value


class FlowerPreprocess(PreprocessParams):
    standardize: bool = False


class FlowerData(Strict):
    download: FlowerDownload = FlowerDownload()
    preprocess: FlowerPreprocess = FlowerPreprocess()


def generate(n_points: int, petals: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) float64 and labels (n, 1) uint8, exactly as in seed 000 section 2.4.1.

    The tutorial seeds NumPy's global legacy generator with ``np.random.seed(seed)``; a
    ``RandomState(seed)`` draws the same stream without touching global state.
    """
    rng = np.random.RandomState(seed)
    per_class = n_points // 2
    x = np.zeros((n_points, 2))
    y = np.zeros((n_points, 1), dtype="uint8")
    for label in range(2):
        rows = range(per_class * label, per_class * (label + 1))
        t = np.linspace(label * 3.12, (label + 1) * 3.12, per_class) + rng.randn(per_class) * noise
        r = petals * np.sin(4 * t) + rng.randn(per_class) * noise
        x[rows] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[rows] = label
    return x, y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    # repr() round-trips float64 exactly, so the CSV holds the generator's values bit for bit.
    # Written atomically: a write cut short (a full disk, a kill) leaves the previous file whole.
    lines = ["x1,x2,label"] + [f"{a!r},{b!r},{int(c)}" for (a, b), c in zip(x.tolist(), y[:, 0])]
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_raw(raw_dir: Path, params: FlowerDownload) -> dict[str, Path]:
    """Generate the training and held-out points into ``raw_dir/{train,test}.csv``, each file
    replaced atomically (:mod:`bplab.outputs`)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": generate(params.n_points, params.petals, params.noise, params.seed),
        "test": generate(params.test_points, params.petals, params.noise, params.test_seed),
    }
    paths = {}
    for split, (x, y) in splits.items():
        paths[split] = raw_dir / SPLIT_FILES[split]
        _write_csv(paths[split], x, y)
    return paths


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) float64 and labels (n, 1) from a flower CSV, checking its layout."""
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing; run the download stage first") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric x1,x2,label table ({exc})") from None
    if table.shape[1] != 3 or not np.isin(table[:, 2], (0, 1)).all():
        raise DataError(f"{path}: expected columns x1,x2,label with labels 0/1")
    return table[:, :2], table[:, 2:]


def preprocess(raw_dir: Path, params: FlowerPreprocess) -> Prepared:
    """x float32 (n, 2), y float32 (n, 1) per split: the validation points carved from the training
    points; optionally standardised with the remaining training points' mean and std."""
    train, test = (read_split(raw_dir / name) for name in SPLIT_FILES.values())
    train, val, validation = carve_validation(*train, params, "data.flower.preprocess")
    splits = {"train": train, "val": val, "test": test}
    transform: dict[str, object] = {"standardize": params.standardize, "validation": validation}
    if params.standardize:
        mean, std = train[0].mean(axis=0), train[0].std(axis=0)
        splits = {split: ((x - mean) / std, y) for split, (x, y) in splits.items()}
        transform |= {"mean": mean.tolist(), "std": std.tolist()}
    arrays = {split: (x.astype(np.float32), y.astype(np.float32)) for split, (x, y) in splits.items()}
    return Prepared(arrays, transform)


def download(raw_dir: Path, params: FlowerDownload) -> list[FetchedFile]:
    """The download stage's work for a generated dataset: write the points, report their digests."""
    return [FetchedFile(path.name, path, "generated from params", hashlib.sha256(path.read_bytes()).hexdigest(),
                        path.stat().st_size)
            for path in write_raw(raw_dir, params).values()]


def preview(prepared: Prepared, raw_dir: Path) -> Figure:
    """Both splits' points, coloured by class."""
    return plots.flower_scatter(prepared.splits)


def evaluation_pictures(result: Evaluation) -> Mapping[str, Figure]:
    """The tutorial's decision boundary, over the test points."""
    return {"decision_boundary.png": plots.decision_boundary(
        lambda grid: result.predict(grid) > 0, result.x, result.y,
        title=f"{result.variant}: decision boundary on the test points")}


DATASET = Dataset(
    task="binary",
    params=FlowerData,
    download=download,
    preprocess=preprocess,
    preview=preview,
    evaluation_pictures=evaluation_pictures,
    champion=Champion("acc"),
    compare_columns=("val_acc", "test_acc", "test_loss", "train_acc"),
)
