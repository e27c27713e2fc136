"""The champion alias: the best version on the current test split, under concurrency and errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bplab.params.schema import Params
from bplab.paths import metrics_file
from bplab.testing.scratch import REPO, stage_env
from bplab.tracking import registry, store
from bplab.tracking.registry import Score
from support.pipeline import mlflow_client, tiny
from support.processes import run

SPLIT = "split-a"


@pytest.fixture
def model_uri(mlflow_repo: Path) -> str:
    """One small logged model (pickle format: fast, and only ever loaded by this test's own store)."""
    import mlflow
    import torch

    mlflow.set_tracking_uri(store.tracking_uri())
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
    return info.model_uri


def champion_version(name: str = "toy") -> str:
    return str(mlflow_client().get_model_version_by_alias(name, registry.CHAMPION).version)


@pytest.mark.parametrize(("higher_is_better", "values", "promoted"), [
    (True, [0.80, 0.70, 0.80, 0.90], [True, False, False, True]),   # accuracy: a tie does not move it
    (False, [5.0, 6.0, 4.0, 4.5], [True, False, True, False]),      # rmse: lower is better
])
def test_champion_moves_only_on_strict_improvement(model_uri: str, higher_is_better: bool,
                                                    values: list[float], promoted: list[bool]) -> None:
    champions = []
    for i, value in enumerate(values):
        score = Score("metric", value, higher_is_better, SPLIT)
        result = registry.register(model_uri, "toy", f"variant_{i}", "run", score)
        assert result.version == str(i + 1)
        assert result.promoted is promoted[i]
        champions.append(result.champion_version)
    expected, current = [], None
    for i, moved in enumerate(promoted):
        current = str(i + 1) if moved else current
        expected.append(current)
    assert champions == expected
    alias = mlflow_client().get_model_version_by_alias("toy", registry.CHAMPION)
    assert str(alias.version) == expected[-1]
    assert alias.tags["variant"] == f"variant_{int(expected[-1]) - 1}"
    assert alias.tags[registry.TEST_DIGEST_TAG] == SPLIT


def test_only_an_evaluate_on_the_committed_split_moves_the_champion(model_uri: str) -> None:
    # `dvc exp run -S data.mnist.preprocess.test_limit=100`, an uncommitted edit of a split: the
    # model is scored on another split, where it may beat everything; it says nothing of the committed one.
    assert registry.register(model_uri, "toy", "full", "run", Score("val_acc", 0.90, True, "full")).promoted
    for value in (0.60, 0.99):  # worse, or better: on another split, neither takes the alias
        other = registry.register(model_uri, "toy", f"small-{value}", "run",
                                  Score("val_acc", value, True, "first-100", committed=False))
        assert (other.promoted, other.champion_version, other.champion_value) == (False, "1", 0.90)
        assert mlflow_client().get_model_version("toy", other.version).tags[registry.COMMITTED_TAG] == "false"
    back = registry.register(model_uri, "toy", "full-again", "run", Score("val_acc", 0.80, True, "full"))
    assert (back.champion_version, back.promoted, back.champion_value) == ("1", False, 0.90)
    # A new split is committed: the first version scored on it takes the alias, whatever the old split's scores.
    moved = registry.register(model_uri, "toy", "new-split", "run", Score("val_acc", 0.70, True, "new"))
    assert (moved.version, moved.champion_version, moved.promoted) == ("5", "5", True)
    assert champion_version() == "5"


def test_promote_moves_the_alias_on_purpose_and_names_an_unknown_version(model_uri: str) -> None:
    registry.register(model_uri, "toy", "a", "run", Score("val_acc", 0.90, True, SPLIT))
    registry.register(model_uri, "toy", "b", "run", Score("val_acc", 0.50, True, "other", committed=False))
    before, chosen = registry.promote("toy", "2", store.tracking_uri())
    assert (before, str(chosen.version), chosen.tags["variant"]) == ("1", "2", "b")
    assert champion_version() == "2"
    with pytest.raises(registry.RegistryError, match=r"registered model 'toy' has no version '7'; its versions "
                                                     r"are 1, 2"):
        registry.promote("toy", "7", store.tracking_uri())
    assert champion_version() == "2"


def test_a_version_without_its_metric_is_never_champion(model_uri: str) -> None:
    import mlflow

    client = mlflow_client()
    # Versions registered by hand (the UI, another tool) with no metric, or one that is not a number.
    for tags in ({registry.TEST_DIGEST_TAG: SPLIT}, {registry.TEST_DIGEST_TAG: SPLIT, "test_acc": "n/a"},
                 {registry.TEST_DIGEST_TAG: SPLIT, "test_acc": "nan"}):
        mlflow.register_model(model_uri, "toy", tags=tags)
    client.set_registered_model_alias("toy", registry.CHAMPION, "1")
    result = registry.register(model_uri, "toy", "scored", "run", Score("test_acc", 0.10, True, SPLIT))
    assert (result.version, result.champion_version, result.promoted) == ("4", "4", True)
    assert champion_version() == "4"


def test_registry_failure_fails_the_stage_and_moves_nothing(workspace: Path, params: Params) -> None:
    from bplab.pipeline.evaluate import evaluate
    from bplab.pipeline.train_stage import train

    first = tiny(params, "flower_logreg", epochs=5)
    train("flower_logreg", first)
    evaluate("flower_logreg", first)
    record = train("flower_module", tiny(params, "flower_module", epochs=5))
    with sqlite3.connect(workspace / "mlflow.db") as db:  # the store refuses new versions, as a broken server would
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_versions "
                   "BEGIN SELECT RAISE(ABORT, 'registry is read-only'); END")

    result = run([sys.executable, str(REPO / "stages/evaluate.py"), "flower_module", "--params",
                  str(REPO / "params.yaml")], cwd=workspace, env=stage_env(), check=False)

    assert result.returncode == 2, result.stderr
    assert "evaluate@flower_module: error: registered model 'flower' in sqlite:///" in result.stderr
    assert "the alias 'champion' was not moved" in result.stderr and "Traceback" not in result.stderr
    assert mlflow_client().get_run(record["run_id"]).info.status == "FINISHED"  # evaluate failed, not the training
    assert not metrics_file("flower_module").exists()
    assert champion_version("flower") == "1"


def test_concurrent_evaluations_leave_the_alias_on_the_best_version(model_uri: str, mlflow_repo: Path) -> None:
    """Two processes register at the same moment, ten rounds; each round both beat the champion so far."""
    rounds = 12
    values = {"a": [], "b": []}
    for r in range(rounds):
        base = 0.3 + 0.05 * r  # both beat the previous round's best (base - 0.03)
        better, worse = ("a", "b") if r % 2 else ("b", "a")
        values[better].append(base + 0.02)
        values[worse].append(base + 0.01)
    signals = mlflow_repo / "rounds"
    signals.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri(), "PYTHONPATH": str(REPO / "src")}
    workers = [subprocess.Popen([sys.executable, str(REPO / "tests/support/registry_worker.py"), model_uri, "toy",
                                 worker, str(signals), *map(repr, values[worker])], env=env, cwd=mlflow_repo,
                                stderr=subprocess.PIPE, text=True)
               for worker in values]
    finished = False
    try:
        for r in range(rounds):
            (signals / f"go-{r}").touch()
            deadline = time.monotonic() + 120
            while not all((signals / f"done-{w}-{r}").exists() for w in values):
                assert all(p.poll() is None for p in workers), [p.stderr.read() for p in workers if p.poll()]
                assert time.monotonic() < deadline, f"round {r} did not finish"
                time.sleep(0.01)
            best = max(values, key=lambda w: values[w][r])
            expected = (signals / f"done-{best}-{r}").read_text()
            assert champion_version() == expected, f"round {r}: champion is not {best}'s version {expected}"
        finished = True
    finally:
        for process in workers:
            if not finished:  # they would wait for the next round for ever
                process.kill()
            process.wait(timeout=60)
    assert [p.returncode for p in workers] == [0, 0]
    assert len(mlflow_client().search_model_versions("name = 'toy'")) == 2 * rounds


def test_evaluating_the_same_training_again_registers_no_second_version(workspace: Path, params: Params) -> None:
    from bplab.pipeline.evaluate import evaluate
    from bplab.pipeline.train_stage import train

    small = tiny(params, "flower_logreg", epochs=5)
    train("flower_logreg", small)
    first = evaluate("flower_logreg", small)
    again = evaluate("flower_logreg", small)  # a re-run after a kill, or `dvc repro -f evaluate@...`
    assert (first["registered_version"], again["registered_version"]) == ("1", "1")
    assert len(mlflow_client().search_model_versions("name = 'flower'")) == 1
    run = mlflow_client().get_run(mlflow_client().get_model_version("flower", "1").run_id)
    assert [m.value for m in mlflow_client().get_metric_history(run.info.run_id, "test_acc")] == [first["test_acc"]]


def test_an_evaluate_on_another_machine_cannot_leave_the_alias_on_a_worse_version(
        model_uri: str, mlflow_repo: Path) -> None:
    """The lock file is one machine's. Here the worse version's process reads the registry before
    the better version exists and moves the alias after the better one's process has: its move is
    stale, and it must see so and put the alias back on the better version."""
    worker = [sys.executable, str(REPO / "tests/support/registry_worker.py"), model_uri, "toy"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri(), "PYTHONPATH": str(REPO / "src")}
    rounds = {name: mlflow_repo / name for name in ("worse", "better", "tmp-a", "tmp-b")}
    for folder in rounds.values():
        folder.mkdir()
    overtaken = rounds["better"] / "done-better-0"  # the better version is registered and aliased
    worse = subprocess.Popen([*worker, "worse", str(rounds["worse"]), "0.5"], cwd=mlflow_repo, text=True,
                             env=env | {"TMPDIR": str(rounds["tmp-a"]), "REGISTRY_WORKER_HOLD": str(overtaken)},
                             stderr=subprocess.PIPE)
    try:
        (rounds["worse"] / "go-0").touch()
        deadline = time.monotonic() + 120
        while not overtaken.with_name(overtaken.name + ".read").exists():  # it has read: only its own version
            assert worse.poll() is None, worse.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (rounds["better"] / "go-0").touch()
        better = subprocess.run([*worker, "better", str(rounds["better"]), "0.9"], cwd=mlflow_repo, text=True,
                                env=env | {"TMPDIR": str(rounds["tmp-b"])}, capture_output=True, timeout=120)
        assert better.returncode == 0, better.stderr
        assert overtaken.read_text() == "2"  # which releases the worse one, to move the alias from its old read
    finally:
        worse.wait(timeout=120)
    assert worse.returncode == 0, worse.stderr.read()
    assert (rounds["worse"] / "done-worse-0").read_text() == "1"
    assert champion_version() == "2"  # not the stale move to version 1
