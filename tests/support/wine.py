"""A second dataset, as a user would add it: scikit-learn's wine data as a module of
``src/bplab/data/`` (:data:`WINE_MODULE`) and its params.yaml entries (:data:`WINE_PARAMS`)."""

from __future__ import annotations

from pathlib import Path

WINE_MODULE = '''"""Wine recognition: 178 wines, 13 chemical measurements, 3 cultivars (ships in scikit-learn)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bplab import plots
from bplab.params.fields import Fraction, PreprocessParams, Strict
from bplab.data.catalog import Champion, Dataset, Evaluation
from bplab.data.fetch import FetchedFile
from bplab.data.processed import Prepared, carve_validation


class WineDownload(Strict):
    source: str = "sklearn.datasets.load_wine"


class WinePreprocess(PreprocessParams):
    test_size: Fraction = 0.25
    split_seed: int = 0


class WineData(Strict):
    download: WineDownload = WineDownload()
    preprocess: WinePreprocess = WinePreprocess()


def download(raw_dir: Path, params: WineDownload) -> list[FetchedFile]:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / "wine.csv"
    np.savetxt(path, np.column_stack([bunch.data, bunch.target]), delimiter=",", fmt="%.17g")
    return [FetchedFile(path.name, path, params.source, hashlib.sha256(path.read_bytes()).hexdigest(),
                        path.stat().st_size)]


def preprocess(raw_dir: Path, params: WinePreprocess) -> Prepared:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    table = np.loadtxt(raw_dir / "wine.csv", delimiter=",")
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=params.test_size,
                                                      random_state=params.split_seed, stratify=y)
    (x_train, y_train), (x_val, y_val), validation = carve_validation(x_rest, y_rest, params, "data.wine.preprocess")
    scaler = StandardScaler().fit(x_train)
    return Prepared({"train": (scaler.transform(x_train).astype(np.float32), y_train),
                     "val": (scaler.transform(x_val).astype(np.float32), y_val),
                     "test": (scaler.transform(x_test).astype(np.float32), y_test)},
                    {"scaler_mean": scaler.mean_.tolist(), "scaler_scale": scaler.scale_.tolist(),
                     "validation": validation})


def preview(prepared: Prepared, raw_dir: Path):
    x, _ = prepared.splits["train"]
    return plots.histograms(x, [f"feature {i}" for i in range(x.shape[1])], title="wine (standardized)")


def evaluation_pictures(result: Evaluation) -> Mapping[str, object]:
    predicted = result.outputs.argmax(axis=1)
    counts = plots.confusion_counts(result.y, predicted, result.outputs.shape[1])
    return {"confusion_matrix.png": plots.confusion_matrix(counts, f"{result.variant}: test confusion matrix")}


DATASET = Dataset(task="multiclass", params=WineData, download=download, preprocess=preprocess, preview=preview,
                  evaluation_pictures=evaluation_pictures, champion=Champion("acc"),
                  compare_columns=("val_acc", "test_acc", "test_loss", "train_acc"))
'''

WINE_PARAMS = {
    "datasets": ["mnist", "boston", "flower", "wine"],
    "data.wine": {"download": {"source": "sklearn.datasets.load_wine"}, "preprocess": {"test_size": 0.25}},
    "train.wine_mlp": {"dataset": "wine", "model": {"arch": "mnist_net", "hidden": [16]}, "epochs": 30,
                       "batch_size": 16, "lr": 0.1, "optimizer": "sgd", "init": "default"},
}


def copy_with_wine(dest: Path) -> Path:
    """A scratch copy of the repository at ``dest`` with the wine module and its params.yaml entries
    added, uncommitted, as a user would add them."""
    from bplab.testing.scratch import copy_repository, set_params

    repo = copy_repository(dest)
    (repo / "src/bplab/data/wine.py").write_text(WINE_MODULE)
    set_params(repo, WINE_PARAMS)
    return repo
