"""`bplab reproduce`: a recorded training run, rerun as a real DVC experiment, gives the same metrics;
what it could not prove (an unfinished run, no metrics, an interpolation DVC would resolve) it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bplab.commands.reproduce import RunRecord, experiment_command, overrides, side_by_side
from bplab.params.yaml12 import read_yaml

VARIANT = "boston_module"








def test_overrides_set_back_what_shaped_the_run_through_dvcs_own_override_parser(tmp_path: Path) -> None:
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` runs on params.yaml

    now = {"seed": 0, "device": "auto", "tracking": {"max_epoch_points": 1000},
           "data": {"boston": {"download": {"sources": [{"url": "http://a/b", "format": "csv"}]},
                               "preprocess": {"test_size": 0.2}},
                    "mnist": {"preprocess": {"mean": 0.5}}},
           "train": {VARIANT: {"lr": 0.5, "scheduler": None, "early_stopping": {"patience": 3}, "param_groups": {}},
                     "other": {"lr": 1}}}
    then = yaml.safe_load(yaml.safe_dump(now))
    then["seed"] = 7
    then["train"][VARIANT] = {"lr": 1e-05, "scheduler": {"name": "step", "step_size": 2}, "momentum": 0.5,
                              "param_groups": {"0": 0.1, "hidden": 1e-05}, "model": {"hidden": [10, 10]},
                              "listed": [{"a": None, "b": "x,y"}, True, -3, "null", "Inf", "nan_ok", "cpu"],
                              "name": "it's \\ a, [b] {c} 1e-05 \\'q\\"}  # Hydra would misread it unquoted
    then["data"]["boston"]["download"]["sources"] = [{"url": "http://***@a/b", "format": "csv"}]  # redacted
    then["data"]["boston"]["preprocess"]["test_size"] = 0.25
    then["data"]["mnist"]["preprocess"]["mean"] = 0.1  # another dataset: not this run's
    then["train"]["other"]["lr"] = 2
    run = RunRecord("r", VARIANT, "boston", "c", [], then, {})
    settings, unset = overrides(run, now)
    assert unset == [f"train.{VARIANT}.early_stopping"]  # present now, absent then: named, kept
    assert list(settings)[:6] == ["seed", f"train.{VARIANT}.lr", f"train.{VARIANT}.scheduler",
                                  f"+train.{VARIANT}.scheduler.name", f"+train.{VARIANT}.scheduler.step_size",
                                  f"+train.{VARIANT}.momentum"]
    command = experiment_command(run, settings, "x")
    assert "-s" not in command  # a data setting: upstream stages rerun too
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(now))
    apply_overrides(file, [command[i + 1] for i, word in enumerate(command) if word == "-S"])
    rewritten = read_yaml(file.read_text())
    assert rewritten["train"][VARIANT] == then["train"][VARIANT] | {"early_stopping": {"patience": 3}}
    assert rewritten["seed"] == 7 and rewritten["data"]["boston"]["preprocess"] == {"test_size": 0.25}
    assert rewritten["data"]["boston"]["download"] == now["data"]["boston"]["download"]  # not the redacted URL
    assert rewritten["data"]["mnist"] == now["data"]["mnist"] and rewritten["train"]["other"] == {"lr": 1}


def test_training_records_params_as_the_stages_read_them(mlflow_repo: Path) -> None:
    """DVC writes a small lr as ``1e-05``; YAML 1.1 (``yaml.safe_load``) reads that as a string, so
    the record, and any rerun from it, would carry ``'1e-05'``, which validation refuses."""
    from bplab.params.load import load_params
    from bplab.pipeline.train_stage.prepare import reproduction
    from bplab.testing.scratch import REPO

    text = (REPO / "params.yaml").read_text()
    (mlflow_repo / "params.yaml").write_text(text.replace("    lr: 0.001\n", "    lr: 1e-05\n", 1))
    record = reproduction(mlflow_repo, load_params(mlflow_repo / "params.yaml"), VARIANT)
    assert record["params"]["train"][VARIANT]["lr"] == 1e-05 == record["resolved"]["train"]["lr"]


def test_nothing_to_compare_is_never_the_same() -> None:
    assert side_by_side({}, {})[1] is False
    assert side_by_side({"epoch_seconds": 1.0, "system/cpu_utilization_percentage": 5.0}, {})[1] is False
    assert side_by_side({"test_rmse": 1.5, "epoch_seconds": 1.0}, {"test_rmse": 1.5, "epoch_seconds": 2.0})[1] is True


PLANTED = "planted-s3cret-value"


def training_run(mlflow_repo: Path, status: str, metrics: dict[str, float], params: dict) -> str:
    """A training run in the repository's own sqlite store, made with the real client."""
    from mlflow import MlflowClient

    from bplab.tracking import store

    client = MlflowClient(store.tracking_uri())
    found = client.get_experiment_by_name("boston")
    experiment = found.experiment_id if found else client.create_experiment(
        "boston", artifact_location=(mlflow_repo / "mlartifacts").as_uri())
    run_id = client.create_run(experiment, tags={"stage": "train", "variant": VARIANT, "dataset": "boston",
                                                 "git_commit": "a" * 40, "git_dirty": "false"}).info.run_id
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    client.log_text(run_id, yaml.safe_dump(params), "reproduce/params.yaml")
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def reproduce_in_process(capsys: pytest.CaptureFixture[str], run_id: str) -> tuple[int, str]:
    """``bplab reproduce RUN --any-commit`` in this process: its exit status and everything it printed."""
    from bplab.commands import main

    capsys.readouterr()  # what creating the store printed
    status = main.main(["reproduce", run_id, "--any-commit"])
    out, err = capsys.readouterr()
    return status, out + err


# Runs a rerun cannot be compared with: the reason each is refused.
UNPROVABLE = [
    ("RUNNING", {"train_loss": 2.0, "test_rmse": 3.0}, "did not finish (its status is RUNNING)"),
    ("KILLED", {"train_loss": 2.0, "epoch_seconds": 0.1}, "did not finish (its status is KILLED)"),  # stopped early
    ("FAILED", {}, "did not finish (its status is FAILED)"),
    ("FINISHED", {"epoch_seconds": 0.1, "system/cpu_utilization_percentage": 50.0}, "has no metric to compare"),
    ("FINISHED", {}, "has no metric to compare"),
]


def test_what_cannot_be_proved_is_refused_in_one_line_and_an_interpolation_by_its_key_only(
        mlflow_repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One store for all (creating a sqlite store takes seconds): unfinished runs, runs without
    metrics, and an OmegaConf interpolation that DVC would resolve to a planted secret."""
    monkeypatch.setenv("BPLAB_PLANTED_SECRET", PLANTED)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow's own lines, not the error's
    today = {"seed": 0, "data": {"boston": {"download": {"sources": [{"url": "http://mirror/b"}]}}}}
    (mlflow_repo / "params.yaml").write_text(yaml.safe_dump(today))
    for status, metrics, why in UNPROVABLE:
        run_id = training_run(mlflow_repo, status, metrics, today)
        code, printed = reproduce_in_process(capsys, run_id)
        assert code == 2 and len(printed.splitlines()) == 1, printed
        assert printed.startswith(f"bplab reproduce: error: run {run_id} {why}"), printed

    then = yaml.safe_load(yaml.safe_dump(today))
    then["data"]["boston"]["download"]["sources"][0]["url"] = "http://u:${oc.env:BPLAB_PLANTED_SECRET}@mirror/b"
    run_id = training_run(mlflow_repo, "FINISHED", {"test_rmse": 3.0}, then)
    code, printed = reproduce_in_process(capsys, run_id)  # (--any-commit prints a note first)
    assert code == 2 and printed.count("error:") == 1 and PLANTED not in printed, printed
    assert printed.splitlines()[-1].startswith(f"bplab reproduce: error: run {run_id}'s reproduce/params.yaml holds "
                                               "an interpolation (${...}) at data.boston.download.sources.0.url: ")

    today["tracking"] = {"note": "${oc.env:BPLAB_PLANTED_SECRET}"}  # today's file: DVC resolves the whole file
    (mlflow_repo / "params.yaml").write_text(yaml.safe_dump(today))
    code, printed = reproduce_in_process(capsys, training_run(mlflow_repo, "FINISHED", {"test_rmse": 3.0}, {"seed": 0}))
    assert code == 2 and printed.count("error:") == 1 and PLANTED not in printed, printed
    assert printed.splitlines()[-1].startswith("bplab reproduce: error: params.yaml holds an interpolation (${...}) "
                                               "at tracking.note: ")


def test_another_commit_is_refused_unless_asked_and_unrecorded_changes_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bplab.commands import reproduce
    from bplab.tracking import store

    monkeypatch.setattr(store, "git_commit", lambda: "b" * 40)  # this checkout's HEAD
    changes = [" M params.yaml", " M dvc.lock", " M src/bplab/models/networks.py", "?? notes.txt"]
    run = RunRecord("r1", VARIANT, "boston", "a" * 40, changes, {}, {})
    with pytest.raises(reproduce.ReproduceError, match=f"run r1 was made at commit {'a' * 12}; this checkout is at "
                                                       f"{'b' * 12}: `git checkout {'a' * 12}` first, or pass "
                                                       "--any-commit"):
        reproduce.check_commit(run, any_commit=False)
    notes = reproduce.check_commit(run, any_commit=True)
    assert notes[0].endswith("rerunning it on this code (--any-commit)")
    # params.yaml and dvc.lock are recorded and set back; the rest is named, not silently ignored
    assert notes[1] == ("the run was made with uncommitted changes that are not reproduced: "
                        "src/bplab/models/networks.py, notes.txt")
    same_commit = RunRecord("r2", VARIANT, "boston", "b" * 40, [], {}, {})
    assert reproduce.check_commit(same_commit, any_commit=False) == []
