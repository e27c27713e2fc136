"""The Recorder: runs that always end with a status, and the one place that writes to MLflow."""

from __future__ import annotations

import ast
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from bplab.testing.scratch import REPO
from bplab.tracking import store
from bplab.tracking.recorder import Recorder


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
    client = MlflowClient(store.tracking_uri())
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
    assert MlflowClient(store.tracking_uri()).get_run(holder["id"]).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


@contextmanager
def _restored(signum: int, handler: Any) -> Iterator[None]:
    try:
        yield
    finally:
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_store_call_takes_effect_once_the_call_is_whole(mlflow_repo: Path, signum: int) -> None:
    """The signal arrives as the store executes SQL (a real SQLAlchemy event on a real sqlite store):
    the call completes, then the interrupt ends the run KILLED, with the store free at once."""
    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    fired = []

    def interrupt_once(*args) -> None:
        if not fired:
            fired.append(True)
            signal.raise_signal(signum)  # its handler runs before this SQL statement returns to the caller

    holder = {}
    # Python's own SIGINT handler, as a stage has it, even where the suite was started in the
    # background (a shell's background job inherits SIGINT ignored, and an ignored signal raises nothing)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt), _restored(signal.SIGINT, before):
        with Recorder.run("toy", "step", {}) as recorder:
            holder["id"] = recorder.run_id
            event.listen(Engine, "before_cursor_execute", interrupt_once)
            try:
                recorder.log_params({"lr": 0.5, "model": {"arch": "mlp"}})
            finally:
                event.remove(Engine, "before_cursor_execute", interrupt_once)
            holder["went on"] = True
    run = MlflowClient(store.tracking_uri()).get_run(holder["id"])
    assert fired and "went on" not in holder
    assert run.data.params == {"lr": "0.5", "model.arch": "mlp"}
    assert run.info.status == "KILLED"


# The one door to MLflow: the tracking package. The recorder writes a stage's run, the registry
# registers and moves aliases, the store makes clients, the queries read for the command line, and
# the sweep's runs are tagged and summed up in sweep_runs, and bplab gc's removals happen in cleanup.
MLFLOW_OWNERS = {"src/bplab/tracking/recorder.py", "src/bplab/tracking/registry.py",
                 "src/bplab/tracking/store.py", "src/bplab/tracking/queries.py",
                 "src/bplab/tracking/sweep_runs.py", "src/bplab/tracking/cleanup.py",
                 "src/bplab/ui/app.py"}  # not a door to the store: a plugin of MLflow's server, wrapping its app


def test_only_the_tracking_package_reaches_mlflow() -> None:
    reaching = set()
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "mlflow" for name in names):
                reaching.add(str(path.relative_to(REPO)))
    assert reaching == MLFLOW_OWNERS


def _epochs(*numbers: int):
    from bplab.train.loop import EpochRecord

    return [EpochRecord(n, {"train_loss": 1.0 / n, "val_loss": 2.0 / n}, [0.5, 0.25], 0.01) for n in numbers]


def test_a_checkpoint_is_written_only_after_its_epochs_are_stored(mlflow_repo: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(store.tracking_uri())
    with Recorder.run("toy", "step", {}) as recorder:
        logger = recorder.epoch_logger(epochs=6, max_points=None, record_steps=True)
        stored_when_written = []
        logger(_epochs(1, 2, 3))
        logger.after_stored(lambda: stored_when_written.append(
            sorted(m.step for m in client.get_metric_history(recorder.run_id, "val_loss"))))
        logger.wait()
    assert stored_when_written == [[1, 2, 3]]
    assert client.get_run(recorder.run_id).data.tags["bplab.logged_through_epoch"] == "3"


def test_a_resumed_run_logs_each_epoch_once(mlflow_repo: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(store.tracking_uri())
    with Recorder.run("toy", "step", {}) as first:
        logger = first.epoch_logger(epochs=6, max_points=None, record_steps=True)
        logger(_epochs(1, 2, 3, 4))  # stored through epoch 4; say the last checkpoint was at epoch 2
        logger.wait()
    with Recorder.run("toy", "step", {}, run_id=first.run_id) as resumed:
        logger = resumed.epoch_logger(epochs=6, max_points=None, record_steps=True)
        logger(_epochs(3, 4, 5, 6))  # re-trained from epoch 2's checkpoint
        logger.wait()
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "val_loss")) == [1, 2, 3, 4, 5, 6]
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "train_loss_step")) == list(range(1, 13))


def test_epochs_stored_by_a_write_whose_answer_was_lost_are_not_logged_again(mlflow_repo: Path) -> None:
    """A server that dies after committing a batch's metrics, before its tag (or before answering),
    leaves epochs the tag does not count: a resumed run must not log them a second time."""
    from mlflow import MlflowClient

    from bplab.errors import TrackingUnavailable

    client = MlflowClient(store.tracking_uri())
    with pytest.raises(TrackingUnavailable, match="connection reset"):
        with Recorder.run("toy", "step", {}) as first:
            logger = first.epoch_logger(epochs=6, max_points=None, record_steps=True)
            logger(_epochs(1, 2))
            logger.wait()
            logger = first.epoch_logger(epochs=6, max_points=None, record_steps=True)
            log_batch = logger.client.log_batch

            def metrics_committed_then_lost(run_id, metrics, tags):
                log_batch(run_id, metrics=metrics)  # the metrics' transaction; the tags' never happens
                raise ConnectionError("connection reset")

            logger.client.log_batch = metrics_committed_then_lost
            logger(_epochs(3, 4))  # the checkpoint stays at epoch 2
            logger.wait()
    assert client.get_run(first.run_id).data.tags["bplab.logged_through_epoch"] == "2"
    with Recorder.run("toy", "step", {}, run_id=first.run_id) as resumed:
        logger = resumed.epoch_logger(epochs=6, max_points=None, record_steps=True)
        assert logger.stored_through == 4
        logger(_epochs(3, 4, 5, 6))  # re-trained from epoch 2's checkpoint
        logger.wait()
    for key, steps in {"val_loss": range(1, 7), "epoch_seconds": range(1, 7), "train_loss_step": range(1, 13)}.items():
        assert sorted(m.step for m in client.get_metric_history(first.run_id, key)) == list(steps), key
    assert client.get_run(first.run_id).data.tags["bplab.logged_through_epoch"] == "6"


def test_after_a_failed_write_no_checkpoint_is_written_and_the_next_report_fails(mlflow_repo: Path) -> None:
    from mlflow import MlflowClient

    from bplab.errors import TrackingUnavailable

    client = MlflowClient(store.tracking_uri())
    written = []
    with pytest.raises(TrackingUnavailable, match=r"writing to the MLflow tracking store sqlite:///.* failed"):
        with Recorder.run("toy", "step", {}) as recorder:
            logger = recorder.epoch_logger(epochs=6, max_points=None, record_steps=False)
            client.delete_run(recorder.run_id)  # the store refuses further writes to this run
            logger(_epochs(1))
            logger.after_stored(lambda: written.append("checkpoint"))
            logger.wait()
    assert written == []


def test_a_logged_model_requires_this_torch_and_mlflow_without_scanning_every_package(
        mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import version

    import importlib_metadata
    import mlflow
    import torch
    from mlflow.utils import requirements_utils

    from bplab.models.architectures import build_model
    from bplab.params.schema import ModelSpec

    # As in a stage process: no map built yet (an earlier test in this process may have logged a model).
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    scans = []
    real_scan = importlib_metadata.packages_distributions
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: scans.append(1) or real_scan())
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="mlp_model", hidden=[10, 10]), 13, 1)
    with Recorder.run("toy", "model", {}) as recorder:
        info = recorder.log_model(model, torch.randn(8, 13))
    assert scans == []  # the environment's 0.4-0.9 s scan of every distribution's files was skipped
    assert requirements_utils._MODULES_TO_PACKAGES is None  # and MLflow's full map is built as usual later
    local = mlflow.pyfunc.get_model_dependencies(info.model_uri)
    assert Path(local).read_text().split() == [f"torch=={version('torch')}", f"mlflow=={version('mlflow')}"]
    loaded = mlflow.pytorch.load_model(info.model_uri)
    example = torch.randn(3, 13)
    assert torch.equal(loaded(example), model(example))
