"""evaluate@<variant> on tiny trained models: metrics, pictures, both saved forms, registry."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bplab.errors import ModelFileError
from bplab.params.schema import Params
from bplab.paths import metrics_file, model_dir, plots_dir
from bplab.pipeline.evaluate import EvaluationError, compute_metrics, evaluate
from bplab.pipeline.train_stage import train
from support.pipeline import mlflow_client, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_flower_metrics_pictures_and_registry(workspace: Path, params: Params) -> None:
    small = tiny(params, "flower_sequential", epochs=200)
    record = train("flower_sequential", small)
    result = evaluate("flower_sequential", small)

    saved = json.loads(metrics_file("flower_sequential").read_text())
    assert list(saved) == ["val_loss", "val_acc", "test_loss", "test_acc"] and 0 <= saved["test_acc"] <= 1
    assert [p.name for p in plots_dir("flower_sequential").iterdir()] == ["decision_boundary.png"]

    client = mlflow_client()
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_acc"] == pytest.approx(saved["test_acc"])
    # The final model scored on the validation split is the training's last per-epoch measurement;
    # evaluate leaves those curves alone (one value per epoch).
    assert saved["val_acc"] == run.data.metrics["val_acc"] == record["final"]["val_acc"]
    assert saved["val_loss"] == pytest.approx(record["final"]["val_loss"], rel=1e-5)
    assert len(client.get_metric_history(record["run_id"], "val_acc")) == 200
    assert run.data.metrics["saved_forms_max_abs_diff"] <= 1e-4
    assert run.data.tags["stage"] == "train"  # evaluate logs into the train run, leaving its tags
    assert (run.data.tags["registered_model"], run.data.tags["registered_version"]) == ("flower", "1")
    artifacts = {a.path for a in client.list_artifacts(record["run_id"], "plots")}
    assert artifacts == {"plots/learning_curves.png", "plots/weights.png", "plots/decision_boundary.png"}

    version = client.get_model_version_by_alias("flower", "champion")
    assert str(version.version) == "1" and result["promoted"]
    assert version.tags["variant"] == "flower_sequential" and version.tags["run_id"] == record["run_id"]
    assert (float(version.tags["val_acc"]), float(version.tags["test_acc"])) == (saved["val_acc"], saved["test_acc"])
    assert version.tags["split_committed"] == "true"  # no git here: nothing to compare with

    import mlflow

    champion = mlflow.pytorch.load_model("models:/flower@champion")
    x = torch.randn(6, 2)
    assert champion(x).shape == (6, 1)


def test_boston_regression_metrics(workspace: Path, params: Params) -> None:
    small = tiny(params, "boston_adam", epochs=5, batch_size=16)
    train("boston_adam", small)
    result = evaluate("boston_adam", small)
    saved = json.loads(metrics_file("boston_adam").read_text())
    assert list(saved) == [f"{split}_{score}" for split in ("val", "test") for score in ("mse", "rmse", "mae", "r2")]
    logged = mlflow_client().get_run(json.loads((model_dir("boston_adam") / "run.json").read_text())["run_id"])
    assert logged.data.metrics["val_rmse"] == saved["val_rmse"]  # not a per-epoch curve: logged as a final value
    assert saved["val_mse"] == pytest.approx(logged.data.metrics["val_loss"], rel=1e-5)  # the last epoch's
    assert saved["test_rmse"] == pytest.approx(saved["test_mse"] ** 0.5)
    assert saved["test_mae"] <= saved["test_rmse"]
    assert result["registered_version"] == "1"
    assert [p.name for p in plots_dir("boston_adam").iterdir()] == ["predicted_vs_actual.png"]


def test_mnist_confusion_matrix_and_misclassified_digits(workspace: Path, params: Params) -> None:
    small = tiny(params, "mnist_batchnet", epochs=2)
    train("mnist_batchnet", small)
    evaluate("mnist_batchnet", small)
    assert sorted(p.name for p in plots_dir("mnist_batchnet").iterdir()) == [
        "confusion_matrix.png", "misclassified.png"]
    saved = json.loads(metrics_file("mnist_batchnet").read_text())
    assert 0 < saved["test_acc"] < 1 and saved["test_loss"] > 0


def test_champion_moves_only_on_improvement(workspace: Path, params: Params) -> None:
    # Three variants of one dataset; the champion is the best validation accuracy registered so far.
    results = {}
    for name, epochs in (("flower_module", 400), ("flower_logreg", 20), ("flower_twolayer", 600)):
        small = tiny(params, name, epochs=epochs)
        train(name, small)
        results[name] = evaluate(name, small)
    client = mlflow_client()
    versions = {v.tags["variant"]: v for v in client.search_model_versions("name = 'flower'")}
    assert len(versions) == 3
    accuracy = {name: r["val_acc"] for name, r in results.items()}
    best = max(accuracy, key=lambda n: (accuracy[n], -int(versions[n].version)))  # ties keep the earlier
    assert str(client.get_model_version_by_alias("flower", "champion").version) == str(versions[best].version)
    best_so_far = None
    for name in ("flower_module", "flower_logreg", "flower_twolayer"):  # in registration order
        expected = best_so_far is None or accuracy[name] > best_so_far
        assert results[name]["promoted"] == expected, (name, accuracy)
        best_so_far = accuracy[name] if expected else best_so_far


def test_disagreeing_saved_forms_fail_evaluate_write_no_metrics_and_leave_the_training_finished(
        workspace: Path, params: Params) -> None:
    small = tiny(params, "flower_module", epochs=50)
    record = train("flower_module", small)
    trained = mlflow_client().get_run(record["run_id"]).info
    state_path = model_dir("flower_module") / "state_dict.pt"
    state = torch.load(state_path, weights_only=True)
    state["layer3.bias"] += 1.0
    torch.save(state, state_path)
    with pytest.raises(EvaluationError, match="predict differently on the test split"):
        evaluate("flower_module", small)
    # evaluate logs into the train run without resuming it: its failure is not the training's, and
    # `bplab compare` (FINISHED runs) still lists the training
    run = mlflow_client().get_run(record["run_id"])
    assert (run.info.status, run.info.end_time) == ("FINISHED", trained.end_time)
    assert not metrics_file("flower_module").exists()
    assert not plots_dir("flower_module").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_state_dict_that_would_run_code_is_refused(workspace: Path, params: Params) -> None:
    small = tiny(params, "flower_logreg", epochs=5)
    train("flower_logreg", small)
    (model_dir("flower_logreg") / "state_dict.pt").write_bytes(pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(ModelFileError, match="state_dict.pt: refused: not a plain state_dict"):
        evaluate("flower_logreg", small)
    assert not (workspace / "pwned").exists()


def test_missing_training_output_names_the_stage(workspace: Path, params: Params) -> None:
    from bplab.errors import DataError

    with pytest.raises(DataError, match=r"models/mnist_mlp/run.json: missing; run train@mnist_mlp first"):
        evaluate("mnist_mlp", params)


def test_regression_metrics_match_sklearn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    generator = torch.Generator().manual_seed(3)
    target = torch.randn(101, 1, generator=generator) * 9 + 22
    outputs = target + torch.randn(101, 1, generator=generator) * 4
    metrics = compute_metrics("regression", outputs, target, "test")
    actual, predicted = target.numpy().ravel(), outputs.numpy().ravel()
    assert metrics["test_mse"] == pytest.approx(mean_squared_error(actual, predicted), rel=1e-6)
    assert metrics["test_rmse"] == pytest.approx(mean_squared_error(actual, predicted) ** 0.5, rel=1e-6)
    assert metrics["test_mae"] == pytest.approx(mean_absolute_error(actual, predicted), rel=1e-6)
    assert metrics["test_r2"] == pytest.approx(r2_score(actual, predicted), rel=1e-6)


def test_r2_of_a_test_split_whose_targets_are_all_equal_is_an_error_naming_it() -> None:
    target = torch.full((1, 1), 21.5)
    with pytest.raises(EvaluationError, match=r"test_r2 is undefined: the 1 test target\(s\) are all 21.5"):
        compute_metrics("regression", target + 1, target, "test")


def test_a_train_limit_that_misses_the_highest_class_still_trains_and_evaluates(workspace: Path,
                                                                               params: Params) -> None:
    from bplab.data import processed

    data = processed.load(workspace / "data/processed/mnist")
    (x_train, y_train), (x_val, y_val), test = (data.splits[split] for split in ("train", "val", "test"))
    assert 9 in test[1]
    y_train, y_val = (np.where(y == 9, 8, y) for y in (y_train, y_val))  # as a small train_limit may leave 9 out
    processed.save(processed.Prepared({"train": (x_train, y_train), "val": (x_val, y_val), "test": test}),
                   workspace / "data/processed/mnist")
    small = tiny(params, "mnist_mlp", epochs=1)
    record = train("mnist_mlp", small)
    assert record["n_outputs"] == 10
    assert 0 <= evaluate("mnist_mlp", small)["test_acc"] < 1
