"""train@<variant> on tiny data: what it writes, and the MLflow record read back through MlflowClient."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from bplab.data import processed
from bplab.errors import ParamsError
from bplab.models.architectures import build_model
from bplab.models.safe_load import load_whole_model
from bplab.params.schema import Params
from bplab.paths import history_file
from bplab.pipeline import train_stage
from support.pipeline import mlflow_client as client
from support.pipeline import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_flower_run_holds_the_contract(workspace: Path, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    record = train_stage.train("flower_module", tiny(params, "flower_module", epochs=30))
    run = client().get_run(record["run_id"])
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.name == "flower" and run.info.run_name == "flower_module"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["variant"], tags["dataset"], tags["stage"], tags["dvc_exp"]) == (
        "flower_module", "flower", "train", "tiny-exp")
    p = run.data.params
    assert (p["lr"], p["epochs"], p["batch_size"], p["optimizer"], p["init"]) == ("1.0", "30", "None", "sgd", "default")
    assert p["model.arch"] == "module_net" and p["model.hidden"] == "[4]" and p["n_parameters"] == "17"
    assert set(run.data.metrics) >= {"train_loss", "val_loss", "train_acc", "val_acc", "epoch_seconds"}
    history = client().get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 31))
    assert "train_loss_step" not in run.data.metrics
    artifacts = {a.path for a in client().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/learning_curves.png", "plots/weights.png"}
    assert [a.path for a in client().list_artifacts(run.info.run_id)] == ["plots", "reproduce", "state_dict"]
    # What `bplab reproduce` reads back (this workspace has no dvc.lock and is no git checkout)
    assert {a.path for a in client().list_artifacts(run.info.run_id, "reproduce")} == {
        "reproduce/params.yaml", "reproduce/variant.json", "reproduce/code.json", "reproduce/environment.json"}
    resolved = client().download_artifacts(run.info.run_id, "reproduce/variant.json")
    assert json.loads(Path(resolved).read_text())["train"]["epochs"] == 30
    # What `bplab diff` compares besides params: the code's hashes (none without a dvc.yaml to list
    # them), the environment, and the validation split it validated on
    assert json.loads(Path(client().download_artifacts(run.info.run_id, "reproduce/code.json")).read_text()) == {}
    environment = json.loads(Path(client().download_artifacts(run.info.run_id, "reproduce/environment.json"))
                             .read_text())
    assert (environment["python"], environment["torch"], environment["mlflow"], environment["device"]) == (
        platform.python_version(), version("torch"), version("mlflow"), "cpu")
    assert environment["torch_build"] == (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    assert {"numpy", "dvc", "platform"} <= set(environment)
    validation = processed.load(workspace / "data/processed/flower").splits["val"]
    assert tags["val_digest"] == processed.content_digest(*validation)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "flower-train" and inputs[0].dataset.digest


def test_outputs_and_logged_model_agree(workspace: Path, params: Params) -> None:
    import mlflow

    record = train_stage.train("flower_sequential", tiny(params, "flower_sequential", epochs=20))
    out = workspace / "models/flower_sequential"
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "run.json", "state_dict.pt"]
    assert json.loads((out / "run.json").read_text())["run_id"] == record["run_id"]
    assert record["model_uri"].startswith("models:/")

    x = torch.from_numpy(processed.load(workspace / "data/processed/flower").splits["test"][0])
    whole = load_whole_model(out / "model.pt")
    fresh = build_model(params.train["flower_sequential"].model, 2, 1)
    fresh.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    logged = mlflow.pytorch.load_model(record["model_uri"])
    expected = whole(x).detach()
    torch.testing.assert_close(fresh(x).detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(logged(x).detach(), expected)
    assert len(logged(x[:7])) == 7  # the batch dimension is not fixed to the input example's

    lines = (workspace / "history/flower_sequential.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,train_acc,val_acc,lr,epoch_seconds"
    assert len(lines) == 21
    last = lines[-1].split(",")
    assert float(last[1]) == pytest.approx(record["final"]["train_loss"])


def test_boston_logs_the_per_iteration_loss_and_param_groups(workspace: Path, params: Params) -> None:
    record = train_stage.train("boston_adam", tiny(params, "boston_adam", epochs=3, batch_size=16))
    run = client().get_run(record["run_id"])
    steps = client().get_metric_history(run.info.run_id, "train_loss_step")
    assert sorted(m.step for m in steps) == list(range(1, 3 * 2 + 1))  # ceil(30 / 16) = 2 per epoch
    assert run.data.params["param_groups.hidden"] == "0.0001"
    assert run.data.params["param_groups.regression"] == "0.01"
    assert "train_acc" not in run.data.metrics
    assert client().get_experiment(run.info.experiment_id).name == "boston"


def test_same_seed_same_metrics(workspace: Path, params: Params) -> None:
    small = tiny(params, "flower_twolayer", epochs=40)
    first = train_stage.train("flower_twolayer", small)
    second = train_stage.train("flower_twolayer", small)
    assert first["run_id"] != second["run_id"]
    assert first["final"] == second["final"]
    history = [client().get_metric_history(r["run_id"], "val_loss") for r in (first, second)]
    assert [m.value for m in history[0]] == [m.value for m in history[1]]


def test_unknown_variant_and_bad_param_group_stop_before_any_run(workspace: Path, params: Params) -> None:
    with pytest.raises(ParamsError, match="train.nope: no such variant.*known: flower_logreg"):
        train_stage.train("nope", params)
    bad = params.train["boston_adam"].model_copy(update={"param_groups": {"hiddn": 0.1}})
    with pytest.raises(ParamsError, match=r"train.boston_adam.param_groups.hiddn: .*allowed: hidden, regression"):
        train_stage.train("boston_adam", params.model_copy(update={"train": {"boston_adam": bad}}))
    batchnorm = params.train["boston_module"].model_copy(update={
        "model": params.train["boston_module"].model.model_copy(update={"arch": "batch_net"}), "batch_size": 29})
    with pytest.raises(ParamsError, match="train.boston_bn.batch_size: batch_size 29 leaves a last batch of 1 row"):
        train_stage.train("boston_bn", params.model_copy(update={"train": {"boston_bn": batchnorm}}))
    assert client().get_experiment_by_name("boston") is None
    assert not (workspace / "models").exists()


def test_long_runs_record_at_most_max_epoch_points_and_train_exactly_as_when_recording_all(
        workspace: Path, params: Params) -> None:
    from bplab.models.safe_load import load_state_dict

    small = tiny(params, "flower_sequential", epochs=50)
    rows, weights = {}, {}
    for points in (None, 10):
        variant = small.model_copy(update={"tracking": small.tracking.model_copy(update={"max_epoch_points": points})})
        record = train_stage.train("flower_sequential", variant)
        header, *lines = history_file("flower_sequential").read_text().splitlines()
        rows[points] = {int(r[0]): r[1:-1] for r in (line.split(",") for line in lines)}  # all but epoch_seconds
        weights[points] = load_state_dict(Path("models/flower_sequential/state_dict.pt"))
    recorded = [1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    for metric in ("train_loss", "val_acc", "lr"):
        logged = client().get_metric_history(record["run_id"], metric)
        assert sorted(m.step for m in logged) == recorded
    assert list(rows[10]) == recorded  # the CSV holds the recorded epochs, as MLflow does
    assert list(rows[None]) == list(range(1, 51))
    # The epochs in between were not evaluated, and training did not change by it.
    assert rows[10] == {epoch: rows[None][epoch] for epoch in recorded}
    assert all(torch.equal(weights[10][k], weights[None][k]) for k in weights[None])
    final = client().get_run(record["run_id"]).data.metrics["train_loss"]  # the latest value is the last epoch's
    assert final == float(rows[10][50][header.split(",").index("train_loss") - 1])
