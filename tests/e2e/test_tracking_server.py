"""A real `mlflow server` on 127.0.0.1: train and evaluate log to it, and everything reads back over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bplab.params.schema import Params
from bplab.pipeline.evaluate import evaluate
from bplab.pipeline.train_stage import train
from bplab.testing.local_servers import MlflowServer
from support.pipeline import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """`mlflow server` over a sqlite store, proxying artifacts, in a folder beside the workspace's files."""
    (tmp_path / "server").mkdir()
    with MlflowServer(tmp_path / "server") as server:
        yield server


@pytest.fixture
def server(tracking_server: MlflowServer) -> str:
    return tracking_server.uri


def test_train_and_evaluate_against_a_tracking_server(workspace: Path, params: Params, server: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    small = tiny(params, "flower_module", epochs=30)
    record = train("flower_module", small)
    metrics = evaluate("flower_module", small)

    client = MlflowClient(server)
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "flower_module" and run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, not a local path
    assert run.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 30
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
        "plots/learning_curves.png", "plots/decision_boundary.png"}
    assert str(client.get_model_version_by_alias("flower", "champion").version) == "1"
    mlflow.set_tracking_uri(server)
    model = mlflow.pytorch.load_model("models:/flower@champion")
    assert model(torch.randn(5, 2)).shape == (5, 1)
    assert not (workspace / "mlflow.db").exists()  # nothing went to the local default store
    assert os.environ["MLFLOW_TRACKING_URI"] == server


def _stage_dir(workspace: Path, epochs: int) -> Path:
    import shutil

    from bplab.testing.scratch import REPO, set_params

    shutil.copytree(REPO / "stages", workspace / "stages")
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    set_params(workspace, {"train.boston_module.epochs": epochs, "train.boston_module.batch_size": 16,
                           "tracking.max_epoch_points": None})
    return workspace


def _start_training(workspace: Path, uri: str) -> subprocess.Popen[str]:
    from bplab.testing.scratch import stage_env

    return subprocess.Popen([sys.executable, "stages/train.py", "boston_module"], cwd=workspace, text=True,
                            env=stage_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_epoch(workspace: Path, process: subprocess.Popen[str], epoch: int) -> None:
    from bplab.models.safe_load import load_without_code

    checkpoint, deadline = workspace / "checkpoints/boston_module.pt", time.monotonic() + 120
    while not (checkpoint.exists() and load_without_code(checkpoint, "a checkpoint")["epoch"] >= epoch):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_server_lost_mid_run_fails_the_stage_fast_and_the_next_run_completes_it(
        workspace: Path, tracking_server: MlflowServer) -> None:
    from mlflow import MlflowClient

    from bplab.testing.scratch import stage_env

    _stage_dir(workspace, epochs=4000)
    process = _start_training(workspace, tracking_server.uri)
    _wait_for_epoch(workspace, process, 1)
    tracking_server.stop(signal.SIGKILL)  # as a crash would
    lost_at = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - lost_at < 60  # MLflow's own retries would take about four minutes
    assert process.returncode == 2, stderr
    assert f"train@boston_module: error: writing to the MLflow tracking store {tracking_server.uri} failed" in stderr
    assert "Traceback" not in stderr
    assert not (workspace / "models").exists() and not (workspace / "history").exists()  # nothing half-done

    tracking_server.start()
    again = subprocess.run([sys.executable, "stages/train.py", "boston_module"], cwd=workspace, text=True,
                           env=stage_env(MLFLOW_TRACKING_URI=tracking_server.uri), capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoints/boston_module.pt after epoch" in again.stderr
    client = MlflowClient(tracking_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("boston").experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, 4001))  # every epoch once: none lost, none doubled


def test_sigterm_does_not_hang_behind_a_dead_server(workspace: Path, tracking_server: MlflowServer) -> None:
    _stage_dir(workspace, epochs=1_000_000)
    process = _start_training(workspace, tracking_server.uri)
    _wait_for_epoch(workspace, process, 1)
    tracking_server.stop(signal.SIGKILL)  # as a crash would
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 45, stderr
    assert process.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
