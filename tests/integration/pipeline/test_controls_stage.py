"""Schedules, early stopping and system metrics in real train-stage processes: logged, recorded,
and resumed after a kill exactly as an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.testing.scratch import REPO, set_params, stage_env
from support.pipeline import mlflow_client

VARIANT = "boston_module"
CONTROLS = {
    f"train.{VARIANT}.epochs": 20000,
    f"train.{VARIANT}.batch_size": 8,
    f"train.{VARIANT}.lr": 0.002,
    f"train.{VARIANT}.scheduler": {"name": "onecycle", "max_lr": 0.01},
    f"train.{VARIANT}.early_stopping": {"metric": "val_loss", "patience": 300, "restore_best": True},
    "tracking.system_metrics": 0.5,
}


@pytest.fixture
def stage_dir(workspace: Path) -> Path:
    """The tiny-data workspace with the repository's stages and params.yaml, for stage processes."""
    shutil.copytree(REPO / "stages", workspace / "stages")
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    return workspace


def train(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "stages/train.py", VARIANT], cwd=cwd, env=stage_env(**env),
                          capture_output=True, text=True, timeout=300)


def histories(run_id: str, prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    client = mlflow_client()
    names = [m for m in client.get_run(run_id).data.metrics if m.startswith(prefix) and m != "epoch_seconds"]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in names}


def test_killed_training_with_a_schedule_and_early_stopping_resumes_exactly(stage_dir: Path) -> None:
    from bplab.models.safe_load import load_state_dict, load_without_code

    set_params(stage_dir, CONTROLS)
    straight = train(stage_dir)
    assert straight.returncode == 0, straight.stderr
    [straight_run] = mlflow_client().search_runs(["1"])
    stop = {k: straight_run.data.tags[k] for k in ("stopped_epoch", "stop_reason", "best_epoch")}
    stopped_epoch = int(stop["stopped_epoch"])
    assert stopped_epoch < 20000 and stop["stop_reason"].startswith("early stopping: val_loss did not improve")
    assert f"train@{VARIANT}: stopped after epoch {stopped_epoch}: early stopping" in straight.stderr
    straight_csv = (stage_dir / f"history/{VARIANT}.csv").read_text()
    straight_weights = load_state_dict(stage_dir / f"models/{VARIANT}/state_dict.pt")
    shutil.rmtree(stage_dir / "models")

    killed = train(stage_dir, BPLAB_KILL_AT=f"train@{VARIANT}/checkpoints:2:end")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "is of a finished training; starting afresh" in killed.stderr  # an early stop is an end
    saved_epoch = load_without_code(stage_dir / f"checkpoints/{VARIANT}.pt", "a checkpoint")["epoch"]
    assert 0 < saved_epoch < stopped_epoch, "the kill must come before early stopping ends the training"
    resumed = train(stage_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoints/{VARIANT}.pt after epoch {saved_epoch} of 20000" in resumed.stderr

    [resumed_run] = [r for r in mlflow_client().search_runs(["1"]) if r.info.run_id != straight_run.info.run_id]
    assert resumed_run.info.status == "FINISHED"
    assert {k: resumed_run.data.tags[k] for k in stop} == stop
    ours, theirs = histories(resumed_run.info.run_id), histories(straight_run.info.run_id)
    ours = {k: v for k, v in ours.items() if not k.startswith("system/")}
    assert ours == {k: v for k, v in theirs.items() if not k.startswith("system/")}
    rates = [v for _, v in ours["lr"]]
    assert ours["lr"][-1][0] == stopped_epoch and len(set(rates)) == len(rates) > 20  # the cycle, logged

    def without_timing(csv: str) -> list[list[str]]:
        return [line.split(",")[:-1] for line in csv.splitlines()]

    resumed_csv = (stage_dir / f"history/{VARIANT}.csv").read_text()
    assert without_timing(resumed_csv) == without_timing(straight_csv)
    assert resumed_csv.splitlines()[0] == "epoch,train_loss,val_loss,train_acc,val_acc,lr,epoch_seconds"
    resumed_weights = load_state_dict(stage_dir / f"models/{VARIANT}/state_dict.pt")
    assert all(resumed_weights[k].equal(v) for k, v in straight_weights.items())

    # MLflow's system metrics went on from the killed start's last sample: one series, no step twice.
    system = histories(resumed_run.info.run_id, "system/")
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(system)
    steps = [step for step, _ in system["system/cpu_utilization_percentage"]]
    assert len(steps) >= 3 and steps == list(range(len(steps)))
    assert "system/cpu_utilization_percentage" in histories(straight_run.info.run_id, "system/")


def test_defaults_keep_the_tutorials_fixed_rate_and_all_their_epochs(stage_dir: Path) -> None:
    set_params(stage_dir, {f"train.{VARIANT}.epochs": 5})
    result = train(stage_dir)
    assert result.returncode == 0, result.stderr
    [run] = mlflow_client().search_runs(["1"])
    assert run.data.tags["stopped_epoch"] == "5" and run.data.tags["stop_reason"] == "completed all 5 epochs"
    assert "best_epoch" not in run.data.tags
    assert [v for _, v in histories(run.info.run_id)["lr"]] == [0.001] * 5
    assert "stopped after" not in result.stderr


def test_a_watched_accuracy_on_a_regression_is_refused_naming_the_key(stage_dir: Path) -> None:
    set_params(stage_dir, {f"train.{VARIANT}.early_stopping": {"metric": "val_acc"}})
    result = train(stage_dir)
    assert result.returncode == 2
    assert (f"train.{VARIANT}.early_stopping.metric: val_acc is not computed for boston (a regression)"
            in result.stderr)
    assert "Traceback" not in result.stderr and not mlflow_client().search_runs(["1"])
