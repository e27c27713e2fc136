"""`bplab reproduce`: a recorded training run, rerun as a real DVC experiment, gives the same metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bplab.reproduce import Recorded, overrides
from conftest import NO_MIRROR, commit, copy_repository, data_mirror, run, set_params, unavailable

VARIANT = "boston_module"
TINY = {f"train.{VARIANT}.epochs": 5, f"train.{VARIANT}.batch_size": 32}
GIT = ["git", "-c", "user.name=bplab-tests", "-c", "user.email=tests@bplab.invalid"]


def bplab(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's ``bplab`` command, run in ``repo`` (whose own code it imports)."""
    return run([str(Path(sys.executable).parent / "bplab"), *args], repo, check=False)


def mlflow_run(repo: Path, run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)


@pytest.mark.e2e
def test_a_run_reproduces_to_the_last_digit_and_another_commit_is_refused(tmp_path: Path) -> None:
    if data_mirror() is None:
        unavailable(NO_MIRROR)
    repo = copy_repository(tmp_path / "repo", TINY)
    run(["dvc", "repro", "preprocess@boston"], repo)
    commit(repo, "data")  # the run's commit, and a clean tree when it trains
    run(["dvc", "repro", f"evaluate@{VARIANT}"], repo)
    original_id = json.loads((repo / f"models/{VARIANT}/run.json").read_text())["run_id"]
    original = mlflow_run(repo, original_id)
    run_commit = original.data.tags["git_commit"]
    assert original.data.tags["git_dirty"] == "false"
    recorded = Path(original.info.artifact_uri.removeprefix("file://")) / "reproduce"
    assert yaml.safe_load((recorded / "params.yaml").read_text())["train"][VARIANT]["epochs"] == 5
    assert json.loads((recorded / "variant.json").read_text())["train"]["epochs"] == 5
    assert "preprocess@boston" in (recorded / "dvc.lock").read_text()

    commit(repo, "trained")  # now the checkout is at another commit
    refused = bplab(repo, "reproduce", original_id)
    assert refused.returncode == 2, refused.stderr
    assert f"was made at commit {run_commit[:12]}; this checkout is at " in refused.stderr
    assert "pass --any-commit" in refused.stderr and "Traceback" not in refused.stderr

    run([*GIT, "checkout", "-q", run_commit], repo)
    set_params(repo, {f"train.{VARIANT}.lr": 0.5})  # an edit since the run: reproduce sets it back
    result = bplab(repo, "reproduce", original_id)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"-S train.{VARIANT}.lr=0.001 train@{VARIANT} evaluate@{VARIANT}" in result.stderr
    assert "every metric is equal to the last digit" in result.stdout
    lines = result.stdout.splitlines()  # DVC's own output, then the table, then the verdict
    header = next(i for i, line in enumerate(lines) if line.split() == ["metric", "original", "reproduced", "same"])
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1: -1]}
    assert {"test_rmse", "test_r2", "train_loss", "val_loss", "lr"} <= set(rows)
    assert all(row[-1] == "yes" for row in rows.values())
    assert rows["test_rmse"][:2] == [repr(original.data.metrics["test_rmse"])] * 2
    experiments = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert f"reproduce-{original_id[:8]}-" in experiments  # a real DVC experiment, kept


def test_overrides_set_back_what_shaped_the_run_and_leave_the_rest() -> None:
    now = {"seed": 0, "device": "auto", "tracking": {"max_epoch_points": 1000},
           "data": {"boston": {"download": {"sources": [{"url": "http://a/b"}]}, "preprocess": {"test_size": 0.2}},
                    "mnist": {"preprocess": {"mean": 0.5}}},
           "train": {VARIANT: {"lr": 0.5, "scheduler": None, "early_stopping": {"patience": 3}}, "other": {"lr": 1}}}
    then = yaml.safe_load(yaml.safe_dump(now))
    then["seed"] = 7
    then["train"][VARIANT] = {"lr": 0.001, "scheduler": {"name": "step", "step_size": 2}}
    then["data"]["boston"]["download"]["sources"] = [{"url": "http://***@a/b"}]  # redacted when logged
    then["data"]["mnist"]["preprocess"]["mean"] = 0.1  # another dataset: not this run's
    then["train"]["other"]["lr"] = 2
    run = Recorded("r", VARIANT, "boston", "c", [], then, {})
    settings, unset = overrides(run, now)
    assert settings == {"seed": 7, f"train.{VARIANT}.lr": 0.001,
                        f"train.{VARIANT}.scheduler": {"name": "step", "step_size": 2}}
    assert unset == [f"train.{VARIANT}.early_stopping"]


def test_another_commit_is_refused_unless_asked_and_unrecorded_changes_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bplab import reproduce, track

    monkeypatch.setattr(track, "git_commit", lambda: "b" * 40)  # this checkout's HEAD
    changes = [" M params.yaml", " M dvc.lock", " M src/bplab/networks.py", "?? notes.txt"]
    run = Recorded("r1", VARIANT, "boston", "a" * 40, changes, {}, {})
    with pytest.raises(reproduce.ReproduceError, match=f"run r1 was made at commit {'a' * 12}; this checkout is at "
                                                       f"{'b' * 12}: `git checkout {'a' * 12}` first, or pass "
                                                       "--any-commit"):
        reproduce.check_commit(run, any_commit=False)
    notes = reproduce.check_commit(run, any_commit=True)
    assert notes[0].endswith("rerunning it on this code (--any-commit)")
    # params.yaml and dvc.lock are recorded and set back; the rest is named, not silently ignored
    assert notes[1] == ("the run was made with uncommitted changes that are not reproduced: "
                        "src/bplab/networks.py, notes.txt")
    same_commit = Recorded("r2", VARIANT, "boston", "b" * 40, [], {}, {})
    assert reproduce.check_commit(same_commit, any_commit=False) == []
