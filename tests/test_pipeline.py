"""End to end: `dvc repro` of the whole DAG on tiny params in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bplab.config import load_params
from conftest import REPO, copy_repo, data_mirror, run, set_params

pytestmark = pytest.mark.e2e

VARIANTS = list(load_params(REPO / "params.yaml").train)
TINY = {
    "data.mnist.preprocess.train_limit": 1000,
    "data.mnist.preprocess.test_limit": 200,
    "train.mnist_mlp.epochs": 2,
    "train.mnist_batchnet.epochs": 2,
    "train.flower_logreg.epochs": 50,
    "train.flower_twolayer.epochs": 300,
    "train.flower_sequential.epochs": 300,
    "train.flower_module.epochs": 300,
    "train.boston_module.epochs": 4,
    "train.boston_sequential.epochs": 4,
    "train.boston_adam.epochs": 4,
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if data_mirror() is None:
        pytest.skip("no data mirror: set BPLAB_DATA_MIRROR (CI uses ../shared/data)")
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    set_params(repo, TINY)
    result = run(["dvc", "repro"], repo)
    return repo, result.stdout


def test_every_variant_trained_once(pipeline: tuple[Path, str]) -> None:
    repo, stdout = pipeline
    for variant in VARIANTS:
        assert stdout.count(f"Running stage 'train@{variant}'") == 1
        files = sorted(p.name for p in (repo / "models" / variant).iterdir())
        assert files == ["model.pt", "run.json", "state_dict.pt"], variant
        history = (repo / "history" / f"{variant}.csv").read_text().splitlines()
        assert len(history) == 1 + TINY[f"train.{variant}.epochs"]


def test_mlflow_has_one_finished_run_per_variant_per_dataset(pipeline: tuple[Path, str]) -> None:
    from mlflow import MlflowClient

    repo, _ = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    params = load_params(repo / "params.yaml")
    for dataset in ("flower", "mnist", "boston"):
        experiment = client.get_experiment_by_name(dataset)
        runs = client.search_runs([experiment.experiment_id])
        expected = {name for name, v in params.train.items() if v.dataset == dataset}
        assert {r.info.run_name for r in runs} == expected
        for run_ in runs:
            assert run_.info.status == "FINISHED"
            record = json.loads((repo / "models" / run_.info.run_name / "run.json").read_text())
            assert record["run_id"] == run_.info.run_id
            assert run_.data.params["epochs"] == str(TINY[f"train.{run_.info.run_name}.epochs"])
            assert run_.data.tags["git_commit"]


def test_repro_again_is_a_no_op_and_an_lr_edit_dirties_one_variant(pipeline: tuple[Path, str]) -> None:
    repo, _ = pipeline
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
    set_params(repo, {"train.boston_module.lr": 0.01})
    assert set(json.loads(run(["dvc", "status", "--json"], repo).stdout)) == {"train@boston_module"}
    again = run(["dvc", "repro"], repo)
    assert again.stdout.count("Running stage") == 1
    assert "Running stage 'train@boston_module'" in again.stdout
