"""`bplab diff` on real runs: in one clone of the tiny pipeline, boston_module is rerun unchanged,
then with a data edit (the split seed), a params edit and a committed code edit, each through
`dvc repro`; each report is read against the run before it, so it holds one change only. An
unknown run's one line is tested in tests/unit/lineage/test_diff.py (the command in-process).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bplab.lineage import diff, record
from bplab.testing.scratch import commit, set_params
from support.pipeline import TinyPipeline, clone_tiny_pipeline
from support.processes import BPLAB, run

VARIANT = "boston_module"  # the cheapest variant whose dataset has a split seed
EDITED_FILE = "src/bplab/train/loop.py"
SECTIONS = ("Params", "Code", "Data", "Environment", "Metrics")


@dataclass(frozen=True)
class Runs:
    """The clone and its training runs of :data:`VARIANT`, each made by one change to the one before."""

    repo: Path
    baseline: str  # the tiny pipeline's own
    rerun: str  # `dvc repro -f`: nothing changed
    data_edit: str  # data.boston.preprocess.split_seed 42 -> 7
    params_edit: str  # train.boston_module.lr 0.001 -> 0.01, trained only
    code_edit: str  # a comment appended to the training loop, committed, trained only

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.repo / 'mlflow.db'}"


def _latest_run(repo: Path) -> str:
    return json.loads((repo / f"models/{VARIANT}/run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def runs(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Four `dvc repro` in one clone. The first two are evaluated too (their validation and test
    split digests are evaluate's); the last two, whose reports are about params and code, only train."""
    repo = clone_tiny_pipeline(tiny_pipeline, tmp_path_factory.mktemp("diff") / "clone")
    made = [_latest_run(repo)]
    run(["dvc", "repro", "-f", "-s", f"train@{VARIANT}", f"evaluate@{VARIANT}"], repo)
    made.append(_latest_run(repo))
    set_params(repo, {"data.boston.preprocess.split_seed": 7})
    run(["dvc", "repro", f"evaluate@{VARIANT}"], repo)  # preprocess@boston first: its params changed
    made.append(_latest_run(repo))
    set_params(repo, {f"train.{VARIANT}.lr": 0.01})
    run(["dvc", "repro", f"train@{VARIANT}"], repo)
    made.append(_latest_run(repo))
    commit(repo, "split seed 7, lr 0.01")
    loop = repo / EDITED_FILE
    loop.write_text(loop.read_text() + "# a comment: new code, the same computation\n")
    commit(repo, "a comment in the training loop")
    run(["dvc", "repro", f"train@{VARIANT}"], repo)
    made.append(_latest_run(repo))
    return Runs(repo, *made)


def report(runs: Runs, a: str, b: str) -> tuple[dict, str]:
    """The report of ``a`` against ``b`` as the command makes it, and its Markdown."""
    found = diff.compare(record.load(a, runs.uri), record.load(b, runs.uri), runs.repo)
    return found, diff.markdown(found)


def section(text: str, title: str) -> str:
    """One ``## title`` section of a Markdown report."""
    return text.split(f"## {title}\n\n", 1)[1].split("\n## ", 1)[0]


def test_an_identical_rerun_has_no_difference_in_params_code_or_data(runs: Runs) -> None:
    found, text = report(runs, runs.baseline, runs.rerun)
    for title in ("Params", "Code", "Data"):
        assert section(text, title).startswith("no difference"), text
    assert found["data"]["same"] and found["code"]["compared"] > 10
    assert all(entry["changed"] is False for entry in found["data"]["inputs"])  # all five recorded in both
    assert found["environment"]["same"] and found["metrics"]["same"]  # deterministic on a CPU
    assert [row["metric"] for row in found["metrics"]["metrics"]][:4] == ["test_mae", "test_mse", "test_r2",
                                                                         "test_rmse"]


def test_a_params_edit_names_the_key_and_both_values_and_nothing_else(runs: Runs) -> None:
    found, text = report(runs, runs.data_edit, runs.params_edit)
    assert found["params"]["differences"] == [{"key": f"train.{VARIANT}.lr", "a": 0.001, "b": 0.01}]
    assert f"| `train.{VARIANT}.lr` | 0.001 | 0.01 |" in section(text, "Params")
    assert section(text, "Code").startswith("no difference") and section(text, "Data").startswith("no difference")
    assert "M params.yaml" in section(text, "Code")  # the edit was not committed when it trained
    # Trained, not evaluated: the train stage's own digests say the train and validation splits are the same.
    assert [(i["input"], i["changed"]) for i in found["data"]["inputs"] if i["input"].endswith("split")] == [
        ("train split", False), ("validation split", False), ("test split", None)]
    assert next(r for r in found["metrics"]["metrics"] if r["metric"] == "train_loss")["change"] != 0


def test_a_code_edit_names_the_file_alone_with_the_commits_diff_stat(runs: Runs) -> None:
    found, text = report(runs, runs.params_edit, runs.code_edit)
    assert (found["code"]["changed"], found["code"]["only_in_a"], found["code"]["only_in_b"]) == ([EDITED_FILE], [], [])
    code = section(text, "Code")
    assert f"| `{EDITED_FILE}` | changed |" in code
    stat = found["code"]["git_diff_stat"]
    assert stat.splitlines()[0].split() == [EDITED_FILE, "|", "1", "+"] and "1 file changed" in stat
    assert stat in code
    assert section(text, "Params").startswith("no difference") and section(text, "Data").startswith("no difference")


def test_a_data_edit_says_the_processed_data_and_the_splits_changed(runs: Runs) -> None:
    found, text = report(runs, runs.rerun, runs.data_edit)
    assert found["params"]["differences"] == [{"key": "data.boston.preprocess.split_seed", "a": 42, "b": 7}]
    assert found["data"]["changed"] == ["processed data", "train split", "validation split", "test split"]
    assert section(text, "Data").startswith(
        "The processed data, train split, validation split and test split changed; the raw data did not.")
    assert section(text, "Code").startswith("no difference")


def test_the_command_writes_json_and_a_picture_of_both_runs_curves(runs: Runs, tmp_path: Path) -> None:
    picture, out = tmp_path / "curves.png", tmp_path / "diff.json"
    result = run([str(BPLAB), "diff", runs.rerun, runs.data_edit, "--format", "json", "--plot", str(picture),
                  "--out", str(out)], runs.repo)
    assert result.stdout == "" and f"bplab diff: report in {out}" in result.stderr
    written = json.loads(out.read_text())
    assert list(written) == ["runs", "params", "code", "data", "environment", "metrics"]
    assert written["runs"]["b"]["run_id"] == runs.data_edit and written["data"]["changed"][0] == "processed data"
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # The picture as the command draws it: each run's train and validation losses, as MLflow has them.
    records = [record.load(run_id, runs.uri) for run_id in (runs.rerun, runs.data_edit)]
    curves = {f"{side} {record_.short_id}": diff.curves(record_, runs.uri) for side, record_ in zip("AB", records)}
    loss = diff.curves_figure(curves).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in loss.get_lines()}
    history = record.history(runs.data_edit, ("val_loss",), runs.uri)["val_loss"]
    assert lines[f"B {records[1].short_id} validation"] == [value for _, value in history]
    assert len(lines) == 4 and lines[f"A {records[0].short_id} train"] != lines[f"B {records[1].short_id} train"]
