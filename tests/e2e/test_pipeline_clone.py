"""A clone of the tiny pipeline (the ``pipeline_clone`` fixture) is a finished pipeline of its own:
the baseline's commit with nothing left for DVC to run, and a copy of the store whose new runs
keep their artifacts in the clone, while the baseline's store and artifacts stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bplab.params.load import load_params
from bplab.tracking import store
from support.pipeline import BASELINE, TinyPipeline
from support.processes import run


def digests(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (or the file itself), by path, with a digest of its bytes."""
    files = [path for root in roots for path in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


def check_the_committed_baseline(clone: Path, baseline: Path) -> None:
    """The clone is at the baseline's tagged commit, unchanged, with every output DVC tracks in place."""
    assert run(["git", "rev-parse", "HEAD"], clone).stdout == run(["git", "rev-parse", BASELINE], baseline).stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}  # nothing missing, nothing to run
    assert (clone / "models/mnist_mlp/model.pt").read_bytes() == (baseline / "models/mnist_mlp/model.pt").read_bytes()


def log_and_load_in(clone: Path) -> tuple[str, dict[str, str], str, object]:
    """From ``clone``, as its stages find their store: a run logged in an experiment the baseline
    made, with an artifact; every experiment's artifact location; where the mnist champion's model
    is downloaded from; and that model, loaded."""
    import mlflow
    from mlflow import MlflowClient

    from bplab.tracking.recorder import Recorder

    try:
        with Recorder.run("flower", "in-the-clone", store.run_tags(dataset="flower", stage="train")) as recorder:
            recorder.log_dict({"where": "the clone"}, "where.json")
        client = MlflowClient(store.tracking_uri())
        locations = {experiment.name: experiment.artifact_location for experiment in client.search_experiments()}
        champion = client.get_model_version_by_alias("mnist", "champion")
        model_uri = client.get_model_version_download_uri("mnist", champion.version)
        return recorder.run_id, locations, model_uri, mlflow.pytorch.load_model("models:/mnist@champion")
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; keep tests independent


def test_a_clone_is_the_finished_baseline_and_what_is_logged_there_stays_there(
        tiny_pipeline: TinyPipeline, pipeline_clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch
    from mlflow import MlflowClient

    clone, baseline = pipeline_clone, tiny_pipeline.repo
    check_the_committed_baseline(clone, baseline)
    snapshot = digests(tiny_pipeline.store, tiny_pipeline.artifacts)
    monkeypatch.chdir(clone)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the clone's own mlflow.db
    run_id, locations, model_uri, model = log_and_load_in(clone)

    # Every experiment's artifacts (the Default one's mlruns/ too) go to the clone.
    datasets = load_params(clone / "params.yaml").datasets
    assert set(locations) == {"Default", *datasets, *(f"{dataset}-data" for dataset in datasets)}
    assert all(where.removeprefix("file://").startswith(f"{clone}/") for where in locations.values()), locations
    logged = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}").get_run(run_id)
    assert logged.info.artifact_uri.startswith(f"{(clone / 'mlartifacts').as_uri()}/")
    artifact = Path(logged.info.artifact_uri.removeprefix("file://")) / "where.json"
    assert json.loads(artifact.read_text()) == {"where": "the clone"}
    # Nothing of it reached the baseline: neither its live store nor its artifacts, nor the snapshot.
    for baseline_store in (baseline / "mlflow.db", tiny_pipeline.store):
        assert MlflowClient(f"sqlite:///{baseline_store}").search_runs(
            [logged.info.experiment_id], f"attributes.run_id = '{run_id}'") == []
    assert not list((baseline / "mlartifacts").rglob(run_id))
    assert digests(tiny_pipeline.store, tiny_pipeline.artifacts) == snapshot
    # The baseline's champion loads from the clone's copy of its artifacts, and predicts.
    assert model_uri.startswith(f"{(clone / 'mlartifacts').as_uri()}/")
    logits = model(torch.from_numpy(np.load(clone / "data/processed/mnist/x_test.npy")[:16]))
    assert logits.shape == (16, 10)
