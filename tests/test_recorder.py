"""The Recorder: runs that always end with a status, and the one place that writes to MLflow."""

from __future__ import annotations

import ast
import os
import signal
from contextlib import nullcontext
from pathlib import Path

import pytest

from bplab import track
from bplab.recorder import Recorder
from conftest import REPO


@pytest.mark.parametrize(("error", "status"), [
    (None, "FINISHED"), (RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_run_always_ends_with_a_status(mlflow_repo: Path, error: BaseException | None, status: str) -> None:
    from mlflow import MlflowClient

    holder = {}
    with pytest.raises(type(error)) if error else nullcontext():
        with Recorder.run("toy", "step", {"stage": "step"}) as recorder:
            holder["id"] = recorder.run_id
            if error:
                raise error
    client = MlflowClient(track.tracking_uri())
    assert client.get_run(holder["id"]).info.status == status
    assert client.get_experiment_by_name("toy").artifact_location == (mlflow_repo / "mlartifacts" / "toy").as_uri()


def test_sigterm_ends_the_run_as_killed(mlflow_repo: Path) -> None:
    from mlflow import MlflowClient

    holder = {}
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with Recorder.run("toy", "step", {}) as recorder:
            holder["id"] = recorder.run_id
            os.kill(os.getpid(), signal.SIGTERM)
    assert MlflowClient(track.tracking_uri()).get_run(holder["id"]).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


# Modules that may import mlflow: the recorder writes, the registry registers and reads versions,
# compare reads runs.
MLFLOW_OWNERS = {"src/bplab/recorder.py", "src/bplab/registry.py", "src/bplab/compare.py"}


def test_only_the_recorder_registry_and_compare_reach_mlflow() -> None:
    reaching = set()
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "mlflow" for name in names):
                reaching.add(str(path.relative_to(REPO)))
    assert reaching == MLFLOW_OWNERS
