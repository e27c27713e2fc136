"""`bplab diff`'s report from two records: each section's verdict, its Markdown and its JSON keys,
runs that recorded less, and the overlaid learning curves. The real runs are in
tests/e2e/test_diff.py; here the records are made in the test."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bplab.commands import main
from bplab.lineage import diff
from bplab.lineage.record import PROCESSED, RAW, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, TrainingRecord

CODE = {"stages/train.py": "a" * 64, "src/bplab/train/loop.py": "b" * 64, "src/bplab/paths.py": "c" * 64}
DATA = {RAW: "raw0", PROCESSED: "proc0", TRAIN_SPLIT: "train0", VAL_SPLIT: "val0", TEST_SPLIT: "test0"}
ENVIRONMENT = {"python": "3.12.3", "torch": "2.8.0", "mlflow": "3.17.0", "numpy": "2.3.0", "device": "cpu"}
RESOLVED = {"variant": "boston_module", "seed": 0, "device": "auto", "tracking": {"system_metrics": 10},
            "train": {"dataset": "boston", "lr": 0.001, "epochs": 4,
                      "model": {"arch": "mlp_model", "hidden": [10, 10]}},
            "data": {"preprocess": {"split_seed": 42, "val_size": 0.1}}}
LOGGED = {"lr": "0.001", "epochs": "4", "n_parameters": "261", "world_size": "1", "n_train": "364", "n_val": "40",
          "n_test": "102", "n_features": "13"}
METRICS = {"test_rmse": 5.0, "val_rmse": 4.0, "train_loss": 20.0, "val_loss": 16.0, "epoch_seconds": 0.4,
           "system/cpu_utilization_percentage": 50.0, "train_loss_step": 19.0, "lr": 0.001}


def record(run_id: str = "a" * 32, **changes) -> TrainingRecord:
    """A boston_module run that recorded everything; ``changes`` replace fields."""
    base = TrainingRecord(run_id=run_id, variant="boston_module", dataset="boston", status="FINISHED",
                          start_time=1_700_000_000_000, params=dict(LOGGED), code=dict(CODE), data=dict(DATA),
                          data_paths={}, environment=dict(ENVIRONMENT), metrics=dict(METRICS), git_commit=None,
                          git_dirty=False, resolved=json.loads(json.dumps(RESOLVED)))
    return dataclasses.replace(base, **changes)


def report(a: TrainingRecord, b: TrainingRecord, tmp_path: Path) -> tuple[dict, str]:
    found = diff.compare(a, b, tmp_path)  # no commits: git is not asked
    return found, diff.markdown(found)


def test_identical_records_say_no_difference_in_every_section(tmp_path: Path) -> None:
    found, text = report(record(), record("b" * 32), tmp_path)
    assert [found[s]["same"] for s in ("params", "code", "data", "environment", "metrics")] == [True] * 5
    assert "## Params\n\nno difference (13 params compared)." in text
    assert "## Code\n\nno difference: the 3 code files of the train stage have the same sha256." in text
    assert "no difference: the raw data, processed data, train split, validation split and test split are the same" \
        in text
    assert "## Environment\n\nno difference (python 3.12.3, torch 2.8.0, mlflow 3.17.0, numpy 2.3.0, device cpu)." \
        in text
    assert "no difference: every metric is equal to the last digit." in text
    assert text.index("## Params") < text.index("## Code") < text.index("## Data") < text.index(
        "## Environment") < text.index("## Metrics")


def test_a_params_edit_names_the_dotted_key_and_both_values(tmp_path: Path) -> None:
    changed = record("b" * 32, resolved=RESOLVED | {"train": RESOLVED["train"] | {"lr": 0.01}})
    found, text = report(record(), changed, tmp_path)
    assert found["params"]["differences"] == [{"key": "train.boston_module.lr", "a": 0.001, "b": 0.01}]
    assert "| `train.boston_module.lr` | 0.001 | 0.01 |" in text
    assert found["code"]["same"] and found["data"]["same"]


def test_runs_of_two_variants_compare_their_sections_not_their_names(tmp_path: Path) -> None:
    other = RESOLVED | {"variant": "boston_sequential", "train": RESOLVED["train"] | {
        "model": {"arch": "mlp_model2", "hidden": [10, 10]}}}
    found, _ = report(record(), record("b" * 32, variant="boston_sequential", resolved=other), tmp_path)
    assert found["params"]["differences"] == [
        {"key": "train.model.arch", "a": "mlp_model", "b": "mlp_model2"},
        {"key": "variant", "a": "boston_module", "b": "boston_sequential"}]


def test_a_changed_file_and_files_in_one_run_only_are_named(tmp_path: Path) -> None:
    code = {k: v for k, v in CODE.items() if k != "src/bplab/paths.py"} | {
        "src/bplab/train/loop.py": "d" * 64, "src/bplab/train/new.py": "e" * 64}
    edited = record("b" * 32, code=code, git_dirty=True, git_changes=[" M src/bplab/train/loop.py"])
    found, text = report(record(), edited, tmp_path)
    code_section = found["code"]
    assert (code_section["changed"], code_section["only_in_a"], code_section["only_in_b"]) == (
        ["src/bplab/train/loop.py"], ["src/bplab/paths.py"], ["src/bplab/train/new.py"])
    assert code_section["same"] is False and code_section["git_diff_stat"] is None
    assert "3 of the 4 code files of the train stage differ" in text
    assert "| `src/bplab/train/loop.py` | changed |" in text and "| `src/bplab/paths.py` | only in A |" in text
    assert "Uncommitted changes when run B trained (`git status --porcelain`):\n\n```\n M src/bplab/train/loop.py" \
        in text


def test_a_data_edit_says_plainly_which_inputs_changed(tmp_path: Path) -> None:
    data = DATA | {PROCESSED: "proc1", TRAIN_SPLIT: "train1", VAL_SPLIT: "val1", TEST_SPLIT: "test1"}
    found, text = report(record(), record("b" * 32, data=data, params=LOGGED | {"n_val": "41"}), tmp_path)
    assert found["data"]["changed"] == [PROCESSED, TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT]
    assert "The processed data, train split, validation split and test split changed; the raw data did not." in text
    assert "| test split | `test0` | `test1` | **changed** |" in text
    assert found["data"]["sizes"] == [{"key": "validation rows", "a": 40, "b": 41}]
    assert "n_val" not in {d["key"] for d in found["params"]["differences"]}  # a size, shown under data


def test_what_a_run_did_not_record_is_said_not_guessed(tmp_path: Path) -> None:
    old = record("b" * 32, code={}, environment={}, resolved={}, data={RAW: "raw0", PROCESSED: "proc0"})
    found, text = report(record(), old, tmp_path)
    assert found["code"]["same"] is None and found["code"]["recorded"] == {"a": True, "b": False}
    assert "The code's hashes are not recorded for run B" in text
    assert found["environment"]["same"] is None and "Not recorded for run B (reproduce/environment.json" in text
    assert found["data"]["same"] is True  # what both recorded is equal
    assert "Not recorded in one run or both: train split, validation split and test split." in text
    # Without variant.json the logged params are compared, sizes left to the data section.
    assert found["params"]["source"] == {"a": "reproduce/variant.json", "b": "logged params"}
    assert "n_train" not in {d["key"] for d in found["params"]["differences"]}


def test_metrics_side_by_side_with_the_change_leaving_out_times_and_system_samples(tmp_path: Path) -> None:
    better = METRICS | {"test_rmse": 4.0, "val_rmse": 4.0, "train_loss": 0.0}
    found, text = report(record(metrics=METRICS | {"train_loss": 0.0, "test_mae": 1.0}),
                         record("b" * 32, metrics=better | {"train_loss": 2.0}), tmp_path)
    rows = {row["metric"]: row for row in found["metrics"]["metrics"]}
    assert list(rows) == ["test_mae", "test_rmse", "val_loss", "val_rmse", "train_loss", "lr"]
    assert rows["test_rmse"] == {"metric": "test_rmse", "a": 5.0, "b": 4.0, "change": -1.0, "relative_change": -0.2}
    assert rows["train_loss"]["relative_change"] is None  # from 0: no ratio
    assert rows["test_mae"]["b"] is None and rows["test_mae"]["change"] is None
    assert "| test_rmse | 5 | 4 | -1 | -20.00% |" in text and "| test_mae | 1 | — | — | — |" in text
    assert found["metrics"]["same"] is False


def test_the_json_report_has_stable_sections_and_keys(tmp_path: Path) -> None:
    found, _ = report(record(), record("b" * 32), tmp_path)
    parsed = json.loads(json.dumps(found))
    assert list(parsed) == ["runs", "params", "code", "data", "environment", "metrics"]
    assert set(parsed["runs"]["a"]) == {"run_id", "short_id", "variant", "dataset", "status", "started",
                                        "git_commit", "git_dirty", "dvc_exp"}
    assert parsed["runs"]["a"]["started"] == "2023-11-14 22:13:20 UTC"
    assert set(parsed["code"]) == {"same", "recorded", "compared", "changed", "only_in_a", "only_in_b", "commits",
                                   "git_diff_stat", "uncommitted_changes"}
    assert set(parsed["data"]) == {"same", "changed", "inputs", "sizes"}
    assert set(parsed["data"]["inputs"][0]) == {"input", "a", "b", "changed"}


def test_the_curves_of_both_runs_share_panels_with_one_colour_each() -> None:
    curves = {"A 11111111 (boston_module)": {"train_loss": [(1, 4.0), (2, 2.0)], "val_loss": [(1, 5.0), (2, 3.0)]},
              "B 22222222 (lr-0.01)": {"train_loss": [(1, 3.0), (2, 1.0)], "val_loss": [(1, 4.0), (2, 2.5)],
                                       "train_acc": [(1, 0.5), (2, 0.7)]}}
    figure = diff.curves_figure(curves, "A vs B")
    loss, accuracy = figure.axes
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert set(lines) == {"A 11111111 (boston_module) train", "A 11111111 (boston_module) validation",
                          "B 22222222 (lr-0.01) train", "B 22222222 (lr-0.01) validation"}
    assert list(lines["B 22222222 (lr-0.01) validation"].get_ydata()) == [4.0, 2.5]
    assert lines["A 11111111 (boston_module) train"].get_color() != lines["B 22222222 (lr-0.01) train"].get_color()
    assert lines["A 11111111 (boston_module) validation"].get_linestyle() == "--"
    assert [text.get_text() for text in loss.get_legend().get_texts()] == list(lines)
    assert [line.get_label() for line in accuracy.get_lines()] == ["B 22222222 (lr-0.01) train"]
    assert accuracy.get_title() == "accuracy per epoch"


def test_an_unknown_run_or_one_that_did_not_train_ends_in_one_line_with_status_2(
        mlflow_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from bplab.tracking import store

    client = MlflowClient(store.tracking_uri())
    data_run = client.create_run(client.create_experiment("boston-data"), tags={"stage": "download"}).info.run_id
    capsys.readouterr()  # MLflow's lines as it creates the store
    assert main.main(["diff", data_run, "no-such-run"]) == 2
    assert capsys.readouterr() == ("", "bplab diff: error: 'no-such-run' is neither a run id, a models:/ URI nor a DVC "
                                       f"experiment with a training run in {store.tracking_uri()}\n")
    assert main.main(["diff", data_run, data_run]) == 2
    assert capsys.readouterr() == ("", f"bplab diff: error: run {data_run} is not a training run (its stage tag is "
                                       "'download')\n")
