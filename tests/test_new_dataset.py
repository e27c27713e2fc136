"""A dataset is one module: adding one (scikit-learn's wine) is a module and params.yaml entries.

The test copies the repository, writes ``src/bplab/data/wine.py`` (below, as a user would) and
the params.yaml entries, and runs ``dvc repro`` of its stages in the copy, which runs the copy's
own code. It then finds what every dataset gets: its DVC stages, its MLflow data and training runs,
its metrics file and pictures, a registered model with a champion, and a row in ``compare``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import commit, copy_repository, run, set_params

pytestmark = pytest.mark.e2e

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


def test_a_new_dataset_is_one_module_and_params_entries(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    repo = copy_repository(tmp_path / "repo")
    (repo / "src/bplab/data/wine.py").write_text(WINE_MODULE)
    set_params(repo, WINE_PARAMS)
    changed = run(["git", "status", "--porcelain"], repo).stdout.split("\n")
    assert sorted(filter(None, changed)) == [" M params.yaml", "?? src/bplab/data/wine.py"]
    commit(repo, "the wine dataset")  # committed, its split is the one its champion lives on

    stages = run(["dvc", "stage", "list", "--name-only"], repo).stdout.split()
    assert {"download@wine", "preprocess@wine", "train@wine_mlp", "evaluate@wine_mlp"} <= set(stages)
    result = run(["dvc", "repro", "evaluate@wine_mlp"], repo)
    for stage in ("download@wine", "preprocess@wine", "train@wine_mlp", "evaluate@wine_mlp"):
        assert f"Running stage '{stage}'" in result.stdout
    assert "Running stage 'download@mnist'" not in result.stdout

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    data_runs = client.search_runs([client.get_experiment_by_name("wine-data").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in data_runs) == [
        ("download", "FINISHED"), ("preprocess", "FINISHED")]
    [training] = client.search_runs([client.get_experiment_by_name("wine").experiment_id])
    assert (training.info.run_name, training.info.status, training.data.tags["dataset"]) == (
        "wine_mlp", "FINISHED", "wine")
    assert len(client.get_metric_history(training.info.run_id, "train_loss")) == 30
    metrics = json.loads((repo / "metrics/wine_mlp.json").read_text())
    assert list(metrics) == ["val_loss", "val_acc", "test_loss", "test_acc"]
    assert metrics["test_acc"] > 0.8  # 3 well-separated cultivars
    assert training.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    assert [p.name for p in (repo / "plots/wine_mlp").iterdir()] == ["confusion_matrix.png"]
    champion = client.get_model_version_by_alias("wine", "champion")
    assert (str(champion.version), champion.tags["variant"]) == ("1", "wine_mlp")

    compared = run([sys.executable, "-m", "bplab.compare", "--dataset", "wine", "--out", str(tmp_path / "c.md")],
                   repo).stdout
    assert "wine_mlp" in compared and "★" in compared
