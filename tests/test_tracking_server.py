"""A real `mlflow server` on 127.0.0.1: train and evaluate log to it, and everything reads back over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bplab.config import Params
from bplab.evaluate import evaluate
from bplab.train.stage import train
from conftest import free_port, tiny, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with a sqlite backend and a proxied artifact store, on a free port."""
    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    wait_for_http(f"{uri}/health", process, tmp_path / "server.log", timeout_s=120)
    try:
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


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
