"""Boston housing: normalising each source's layout to one CSV, then split and scale.

Every source is rendered to the same canonical CSV (header ``CRIM,...,MEDV``, numbers in
Python's shortest round-trip form, ``18.0`` written ``18``), whose SHA-256 is known, so StatLib's
two-lines-per-record text, an OpenML CSV and the local mirror are verified the same way.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator

from bplab import plots
from bplab.data.catalog import Champion, Dataset, Evaluation
from bplab.data.fetch import Candidate, FetchedFile, FetchPolicy, fetch_file, mirror_dir
from bplab.data.processed import Prepared, carve_validation
from bplab.errors import DataError, ParamsError
from bplab.params.fields import Fraction, PreprocessParams, Seed, Strict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILE_NAME = "boston.csv"
SHA256 = "79ac716620024011b03c0c44d2bf99069b8173649181926d9109c25475a3804c"
FEATURES = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT",
)
TARGET = "MEDV"
COLUMNS = (*FEATURES, TARGET)
N_ROWS = 506


class BostonSource(Strict):
    """One place to get the Boston table, and the layout its bytes come in."""

    url: str = Field(min_length=1)
    format: Literal["statlib", "csv"]


class BostonDownload(FetchPolicy):
    sources: list[BostonSource] = Field(min_length=1)


class BostonPreprocess(PreprocessParams):
    test_size: Fraction = 0.2
    split_seed: Seed = 42
    drop_features: list[Literal[FEATURES]] = []  # type: ignore[valid-type]

    @field_validator("drop_features")
    @classmethod
    def _keep_at_least_one(cls, value: list[str]) -> list[str]:
        if len(set(value)) >= len(FEATURES):
            raise ValueError("cannot drop every feature")
        return value


class BostonData(Strict):
    download: BostonDownload
    preprocess: BostonPreprocess = BostonPreprocess()


def _number(text: str) -> str:
    value = repr(float(text))
    return value[:-2] if value.endswith(".0") else value


def render_csv(rows: list[list[float | str]]) -> bytes:
    """The canonical CSV bytes of the table's rows (14 values each)."""
    lines = [",".join(COLUMNS)]
    lines += [",".join(_number(str(v)) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _check_rows(rows: list[list[str]], origin: str) -> None:
    if len(rows) != N_ROWS:
        raise ValueError(f"{origin}: expected {N_ROWS} rows, found {len(rows)}")
    for number, row in enumerate(rows, start=1):
        for column, cell in zip(COLUMNS, row, strict=True):
            try:
                float(cell)
            except ValueError:
                raise ValueError(f"{origin}: row {number}, column {column}: {cell!r} is not a number") from None


def from_statlib(payload: bytes) -> bytes:
    """StatLib's original text: a free-text preamble, then each record wrapped over two lines."""
    values: list[str] = []
    for line in payload.decode("latin-1").splitlines():
        tokens = line.split()
        if tokens and all(_is_number(t) for t in tokens):
            values.extend(tokens)
    if len(values) != N_ROWS * len(COLUMNS):
        raise ValueError(f"StatLib text: expected {N_ROWS * len(COLUMNS)} numbers, found {len(values)}")
    rows = [values[i: i + len(COLUMNS)] for i in range(0, len(values), len(COLUMNS))]
    _check_rows(rows, "StatLib text")
    return render_csv(rows)


def from_csv(payload: bytes) -> bytes:
    """A CSV with a header naming the 14 columns in any order or case (OpenML, the mirror)."""
    reader = csv.reader(io.StringIO(payload.decode("utf-8-sig")))
    try:
        header = [h.strip().strip('"').upper() for h in next(reader)]
    except StopIteration:
        raise ValueError("CSV is empty") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"CSV lacks column(s) {', '.join(missing)}; header is {','.join(header)}")
    order = [header.index(c) for c in COLUMNS]
    rows = []
    for number, row in enumerate(reader, start=1):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"CSV: row {number} has {len(row)} values, expected {len(header)}")
        rows.append([row[i].strip() for i in order])
    _check_rows(rows, "CSV")
    return render_csv(rows)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


_DECODERS = {"statlib": from_statlib, "csv": from_csv}


def candidates(params: BostonDownload) -> list[Candidate]:
    """The local mirror's ``boston/boston.csv`` (if set) first, then the configured sources."""
    found = []
    mirror = mirror_dir()
    if mirror is not None:
        found.append(Candidate(str(mirror / "boston" / FILE_NAME), from_csv))
    found += [Candidate(source.url, _DECODERS[source.format]) for source in params.sources]
    return found


def download(raw_dir: Path, params: BostonDownload, sha256: str = SHA256) -> list[FetchedFile]:
    """Fetch the table into ``raw_dir/boston.csv`` in canonical form."""
    return [fetch_file(FILE_NAME, candidates(params), sha256, raw_dir / FILE_NAME, params)]


def read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 13) float64 and target (n,) from the canonical CSV, with errors naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing; run the download stage first") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != COLUMNS:
        found = ",".join(rows[0]) if rows else "(empty file)"
        missing = [c for c in COLUMNS if not rows or c not in rows[0]]
        lacks = f" (missing {', '.join(missing)})" if missing else ""
        raise DataError(f"{path}: header must be {','.join(COLUMNS)}, found {found}{lacks}")
    table = np.empty((len(rows) - 1, len(COLUMNS)))
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(COLUMNS):
            raise DataError(f"{path}: line {number} has {len(row)} values, expected {len(COLUMNS)}")
        for column, cell in enumerate(row):
            try:
                table[number - 2, column] = float(cell)
            except ValueError:
                raise DataError(f"{path}: line {number}, column {COLUMNS[column]}: {cell!r} is not a number") from None
    return table[:, :-1], table[:, -1]


def preprocess(raw_dir: Path, params: BostonPreprocess) -> Prepared:
    """Split off the test rows, carve the validation rows from the rest, then standardise with a
    scaler fitted on the remaining training rows only.

    x float32 (n, k) and y float32 (n, 1) per split; the transform records the scaler's
    ``mean_`` and ``scale_`` with the feature names they belong to, and the splits' sizes and seeds.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, target = read_table(raw_dir / FILE_NAME)
    keep = [i for i, name in enumerate(FEATURES) if name not in params.drop_features]
    features = features[:, keep]
    x_rest, x_test, y_rest, y_test = train_test_split(
        features, target, test_size=params.test_size, random_state=params.split_seed
    )
    if min(len(x_rest), len(x_test)) < 2:  # the scaler and R² need two rows to mean anything
        raise ParamsError(f"data.boston.preprocess.test_size: {params.test_size} leaves {len(x_rest)} training "
                          f"and {len(x_test)} test rows of {len(features)}; each split needs at least 2")
    (x_train, y_train), (x_val, y_val), validation = carve_validation(
        x_rest, y_rest, params, "data.boston.preprocess", least=2)
    scaler = StandardScaler().fit(x_train)
    names = [FEATURES[i] for i in keep]
    transform = {
        "features": names,
        "scaler_mean": dict(zip(names, scaler.mean_.tolist())),
        "scaler_scale": dict(zip(names, scaler.scale_.tolist())),
        "test_size": params.test_size,
        "split_seed": params.split_seed,
        "validation": validation,
    }

    def prepared(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scaler.transform(x).astype(np.float32), y.astype(np.float32).reshape(-1, 1)

    return Prepared({"train": prepared(x_train, y_train), "val": prepared(x_val, y_val),
                     "test": prepared(x_test, y_test)}, transform)


def preview(prepared: Prepared, raw_dir: Path) -> Figure:
    """A histogram of each raw column, the features and the target."""
    features, target = read_table(raw_dir / FILE_NAME)
    return plots.histograms(np.column_stack([features, target]), COLUMNS,
                            title=f"Boston features and target {TARGET} (raw)")


def evaluation_pictures(result: Evaluation) -> Mapping[str, Figure]:
    """Predicted against actual prices, and the residuals."""
    return {"predicted_vs_actual.png": plots.regression_diagnostics(result.y, result.outputs,
                                                                    f"{result.variant}: test split")}


DATASET = Dataset(
    task="regression",
    params=BostonData,
    download=download,
    preprocess=preprocess,
    preview=preview,
    evaluation_pictures=evaluation_pictures,
    champion=Champion("rmse"),
    compare_columns=("val_rmse", "test_rmse", "test_mae", "test_r2", "train_loss"),
)
