"""`bplab reproduce` of a recorded training run: a real DVC experiment in a clone of the tiny
pipeline gives the same metrics to the last digit; another commit is refused.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from bplab.params.yaml12 import read_yaml
from bplab.testing.scratch import commit, set_params
from support.processes import BPLAB, run

VARIANT = "boston_module"

# Today's params.yaml has early_stopping: null, and no momentum or scheduler key at all.
TINY = {f"train.{VARIANT}.epochs": 5, f"train.{VARIANT}.batch_size": 32, f"train.{VARIANT}.early_stopping": None}


# The original run is a DVC experiment with: lr that DVC writes as 1e-05 (YAML 1.1 reads it as a string; DVC
# writes 0.001 for 1e-3, in exponent form only below 1e-4), keys today's params.yaml lacks (one a sub-section),
# and a sub-section where today's params.yaml has null.
ORIGINAL = [f"train.{VARIANT}.lr=1e-5", f"+train.{VARIANT}.momentum=0.5",
            f"+train.{VARIANT}.scheduler={{name:step,step_size:2}}", f"train.{VARIANT}.early_stopping={{patience:2}}"]


# What reproduce must send to set today's params.yaml back to the run's (in the order of the run's keys).
SET_BACK = [f"train.{VARIANT}.lr=1e-05", f"train.{VARIANT}.early_stopping={{}}",
            f"+train.{VARIANT}.early_stopping.patience=2", f"+train.{VARIANT}.momentum=0.5",
            f"+train.{VARIANT}.scheduler={{}}", f"+train.{VARIANT}.scheduler.name=step",
            f"+train.{VARIANT}.scheduler.step_size=2"]


GIT = ["git", "-c", "user.name=bplab-tests", "-c", "user.email=tests@bplab.invalid"]


def bplab(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's ``bplab`` command, run in ``repo`` (whose own code it imports)."""
    return run([str(BPLAB), *args], repo, check=False)


def mlflow_run(repo: Path, run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)


def test_a_dvc_experiment_reproduces_to_the_last_digit_and_another_commit_is_refused(pipeline_clone: Path) -> None:
    repo = pipeline_clone  # Boston's data prepared
    set_params(repo, TINY)
    commit(repo, "data")  # the run's commit
    sets = [arg for setting in ORIGINAL for arg in ("-S", setting)]
    run(["dvc", "exp", "run", "-n", "original", *sets, f"evaluate@{VARIANT}"], repo)
    assert "lr: 1e-05" in (repo / "params.yaml").read_text()  # as DVC wrote it
    original_id = json.loads((repo / f"models/{VARIANT}/run.json").read_text())["run_id"]
    original = mlflow_run(repo, original_id)
    run_commit = original.data.tags["git_commit"]
    recorded = Path(original.info.artifact_uri.removeprefix("file://")) / "reproduce"
    variant = read_yaml((recorded / "params.yaml").read_text())["train"][VARIANT]
    assert (variant["epochs"], variant["lr"], variant["scheduler"]) == (5, 1e-05, {"name": "step", "step_size": 2})
    assert json.loads((recorded / "variant.json").read_text())["train"]["lr"] == 1e-05
    assert "preprocess@boston" in (recorded / "dvc.lock").read_text()

    commit(repo, "trained")  # now the checkout is at another commit
    refused = bplab(repo, "reproduce", original_id)
    assert refused.returncode == 2, refused.stderr
    assert f"was made at commit {run_commit[:12]}; this checkout is at " in refused.stderr
    assert "pass --any-commit" in refused.stderr and "Traceback" not in refused.stderr

    run([*GIT, "checkout", "-q", run_commit], repo)  # params.yaml as committed: lr 0.001, early_stopping null
    result = bplab(repo, "reproduce", original_id)

    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("bplab reproduce: dvc exp run "))
    words = shlex.split(line.removeprefix("bplab reproduce: dvc "))  # the command as printed can be pasted
    assert sorted(words[i + 1] for i, word in enumerate(words) if word == "-S") == sorted(SET_BACK)
    assert "-s" in words and words[-2:] == [f"train@{VARIANT}", f"evaluate@{VARIANT}"]
    assert "every metric is equal to the last digit" in result.stdout
    lines = result.stdout.splitlines()  # DVC's own output, then the table, then the verdict
    header = next(i for i, line in enumerate(lines) if line.split() == ["metric", "original", "reproduced", "same"])
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1: -1]}
    assert {"test_rmse", "test_r2", "val_rmse", "train_loss", "val_loss", "lr"} <= set(rows)
    assert all(row[-1] == "yes" for row in rows.values())
    assert rows["test_rmse"][:2] == [repr(original.data.metrics["test_rmse"])] * 2
    assert float(rows["lr"][0]) < 1e-05  # the step schedule ran again: lr 1e-05, then a tenth of it
    experiments = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert f"reproduce-{original_id[:8]}-" in experiments  # a real DVC experiment, kept
