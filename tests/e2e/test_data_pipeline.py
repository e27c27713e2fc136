"""End to end: the data stages under real `dvc repro`, offline from the mirror, logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bplab.data import processed
from bplab.params.load import load_params
from bplab.testing.scratch import REPO, copy_repository
from support.processes import NO_MIRROR, run, unavailable

DATASETS = load_params(REPO / "params.yaml").datasets  # the tutorials' and any added since


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from bplab.testing.scratch import data_mirror

    if data_mirror() is None:
        unavailable(NO_MIRROR)
    repo = copy_repository(tmp_path_factory.mktemp("data-pipeline") / "repo")
    result = run(["dvc", "repro", *(f"preprocess@{d}" for d in DATASETS)], repo)
    return repo, result.stdout


def test_every_datasets_data_stages_ran(repro: tuple[Path, str]) -> None:
    _, stdout = repro
    for dataset in DATASETS:
        assert f"Running stage 'download@{dataset}'" in stdout
        assert f"Running stage 'preprocess@{dataset}'" in stdout


def test_mnist_tensors(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    data = processed.load(repo / "data/processed/mnist")
    x, y = data.splits["train"]
    x_val, y_val = data.splits["val"]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((54000, 784), np.float32, (54000,), np.int64)
    assert (x_val.shape, y_val.shape) == ((6000, 784), (6000,))  # 10% of the 60000 training images
    assert data.splits["test"][0].shape == (10000, 784)
    every = float(x.sum(dtype=np.float64) + x_val.sum(dtype=np.float64)) / (60000 * 784)
    assert every == pytest.approx(-0.7386, abs=1e-4)  # the 60000 training images, split in two
    assert x.min() == -1.0 and x.max() == 1.0
    assert (np.bincount(y) + np.bincount(y_val)).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                                              5949]


def test_boston_split_and_scaler_fitted_on_train_only(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    data = processed.load(repo / "data/processed/boston")
    x_train, y_train = data.splits["train"]
    x_test, _ = data.splits["test"]
    assert (x_train.shape, y_train.shape, x_test.shape) == ((364, 13), (364, 1), (102, 13))
    assert data.splits["val"][0].shape == (40, 13)
    np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0), 1, atol=1e-4)
    assert np.abs(x_test.mean(axis=0)).max() > 1e-3  # the test split was not used to fit
    meta = json.loads((repo / "data/processed/boston/transform.json").read_text())
    assert list(meta["transform"]["scaler_mean"]) == meta["transform"]["features"]
    assert len(meta["transform"]["scaler_scale"]) == 13


def test_flower_tensors(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    data = processed.load(repo / "data/processed/flower")
    assert data.splits["train"][0].shape == (360, 2) and data.splits["test"][1].shape == (400, 1)
    assert data.splits["val"][0].shape == (40, 2)


def test_mlflow_data_experiments_hold_runs_with_pictures(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    from mlflow import MlflowClient

    assert (repo / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    for dataset in DATASETS:
        experiment = client.get_experiment_by_name(f"{dataset}-data")
        assert experiment is not None, dataset
        assert experiment.artifact_location.startswith((repo / "mlartifacts").as_uri())
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert set(runs) == {"download", "preprocess"}
        for stage, run_ in runs.items():
            assert run_.info.status == "FINISHED"
            assert run_.data.tags["stage"] == stage and run_.data.tags["dataset"] == dataset
            assert len(run_.data.tags["git_commit"]) == 40
        pictures = [a.path for a in client.list_artifacts(runs["preprocess"].info.run_id, "plots")]
        assert pictures == [f"plots/{dataset}_preview.png"]
        assert any(k.startswith("shape.") for k in runs["preprocess"].data.params)
        assert any(k.startswith("sha256.") for k in runs["download"].data.params)
    mnist_download = client.search_runs(
        [client.get_experiment_by_name("mnist-data").experiment_id], "attributes.run_name = 'download'")[0]
    assert mnist_download.data.params["sha256.train-labels-idx1-ubyte"] == (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5")
    assert mnist_download.data.params["source.train-labels-idx1-ubyte"].endswith("mnist/train-labels-idx1-ubyte.gz")
    boston_preprocess = client.search_runs(
        [client.get_experiment_by_name("boston-data").experiment_id], "attributes.run_name = 'preprocess'")[0]
    assert float(boston_preprocess.data.params["transform.scaler_mean.RM"]) == pytest.approx(6.28, abs=0.1)


def test_second_repro_does_nothing(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    again = run(["dvc", "repro", *(f"preprocess@{d}" for d in DATASETS)], repo)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status", "--json", *(f"preprocess@{d}" for d in DATASETS)], repo)
    assert json.loads(status.stdout) == {}


def test_params_edit_dirties_only_that_dataset(repro: tuple[Path, str]) -> None:
    repo, _ = repro
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("test_size: 0.2", "test_size: 0.25", 1))
    try:
        targets = [f"preprocess@{d}" for d in DATASETS]  # the train stages have not run in this copy
        status = json.loads(run(["dvc", "status", "--json", *targets], repo).stdout)
        assert set(status) == {"preprocess@boston"}
    finally:
        (repo / "params.yaml").write_text(text)
