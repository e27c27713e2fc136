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

from bplab.testing.scratch import commit
from support.processes import run
from support.wine import copy_with_wine


def test_a_new_dataset_is_one_module_and_params_entries(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    repo = copy_with_wine(tmp_path / "repo")
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
