"""MNIST: the four IDX files, their checksums, parsing and the tutorial's normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import AnyUrl, Field, field_validator

from bplab import plots
from bplab.data.catalog import Champion, Dataset, Evaluation
from bplab.data.fetch import Candidate, FetchedFile, FetchPolicy, fetch_file, gunzip, mirror_dir
from bplab.data.processed import Prepared, carve_validation
from bplab.errors import DataError
from bplab.params.fields import PositiveFloat, PositiveInt, PreprocessParams, Strict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# SHA-256 of the decompressed IDX bytes (the .gz bytes differ between mirrors).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
MISCLASSIFIED_SHOWN = 40


class MnistDownload(FetchPolicy):
    mirrors: list[AnyUrl] = Field(min_length=1)

    @field_validator("mirrors", mode="before")
    @classmethod
    def _urls_from_strings(cls, value: Any) -> Any:
        # strict mode would refuse plain YAML strings for AnyUrl; parse them explicitly.
        if isinstance(value, list):
            return [AnyUrl(v) if isinstance(v, str) else v for v in value]
        return value


class MnistPreprocess(PreprocessParams):
    mean: float = 0.5
    std: PositiveFloat = 0.5
    train_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None


class MnistData(Strict):
    download: MnistDownload
    preprocess: MnistPreprocess = MnistPreprocess()


def candidates(name: str, params: MnistDownload) -> list[Candidate]:
    """The local mirror (if set) first, then each official mirror, all serving ``<name>.gz``."""
    found = []
    mirror = mirror_dir()
    if mirror is not None:
        found.append(Candidate(str(mirror / "mnist" / f"{name}.gz"), gunzip))
    for base in params.mirrors:
        found.append(Candidate(str(base).rstrip("/") + f"/{name}.gz", gunzip))
    return found


def download(raw_dir: Path, params: MnistDownload, checksums: dict[str, str] = FILES) -> list[FetchedFile]:
    """Fetch the four IDX files into ``raw_dir``, each verified against ``checksums``."""
    return [
        fetch_file(name, candidates(name, params), sha256, raw_dir / name, params)
        for name, sha256 in checksums.items()
    ]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header, uint8 payload), checking its size against the header."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing; run the download stage first") from None
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an IDX file with magic number {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: truncated or padded: {len(raw)} bytes, header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (n, 28, 28) and labels (n,) of ``split`` ('train' or 'test')."""
    prefix = SPLITS[split]
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte", _IMAGES_MAGIC)
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", _LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{raw_dir}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize(images: np.ndarray, params: MnistPreprocess) -> np.ndarray:
    """The tutorial's ``data_tf`` on a whole array: x/255, (x-mean)/std, flattened, float32."""
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return (x - np.float32(params.mean)) / np.float32(params.std)


def preprocess(raw_dir: Path, params: MnistPreprocess) -> Prepared:
    """Train, validation and test arrays ready to train on: x float32 (n, 784), y int64 (n,).

    The validation rows are carved from the (limited) training images; the test images stay the
    t10k file's.
    """
    images, labels = load_split(raw_dir, "train")
    keep = params.train_limit or len(images)
    train, val, validation = carve_validation(images[:keep], labels[:keep], params, "data.mnist.preprocess")
    images, labels = load_split(raw_dir, "test")
    test = images[: params.test_limit or len(images)], labels[: params.test_limit or len(labels)]
    result = {split: (normalize(x, params), y.astype(np.int64))
              for split, (x, y) in {"train": train, "val": val, "test": test}.items()}
    transform = {"divide_by": 255, "mean": params.mean, "std": params.std, "flattened_to": 28 * 28,
                 "validation": validation}
    return Prepared(result, transform)


def preview(prepared: Prepared, raw_dir: Path) -> Figure:
    """The first 64 training digits, as the model sees them, with their labels."""
    x, y = prepared.splits["train"]
    return plots.digit_grid(x[:64], y[:64], title="First 64 training digits (normalised) and labels")


def evaluation_pictures(result: Evaluation) -> Mapping[str, Figure]:
    """The confusion matrix, and the first misclassified test digits with true and predicted labels."""
    predicted = result.outputs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != result.y)[:MISCLASSIFIED_SHOWN]
    return {
        "confusion_matrix.png": plots.confusion_matrix(
            plots.confusion_counts(result.y, predicted, result.outputs.shape[1]),
            f"{result.variant}: test confusion matrix"),
        "misclassified.png": plots.digit_grid(
            result.x[wrong], [f"{result.y[i]}→{predicted[i]}" for i in wrong],
            title=f"{result.variant}: first {len(wrong)} misclassified test digits (true→predicted)"),
    }


DATASET = Dataset(
    task="multiclass",
    params=MnistData,
    download=download,
    preprocess=preprocess,
    preview=preview,
    evaluation_pictures=evaluation_pictures,
    champion=Champion("acc"),
    compare_columns=("val_acc", "test_acc", "test_loss", "train_acc"),
)
