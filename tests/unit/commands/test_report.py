"""`bplab report` on a store with nothing to report: one line saying why, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.processes import bplab_here


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    done = bplab_here("report", *args, capsys=capsys)
    return done.returncode, done.stdout, done.stderr


def test_report_refuses_a_missing_or_empty_store_in_one_line(mlflow_repo: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{mlflow_repo / 'mlflow.db'}"
    assert report(capsys) == (2, "", f"bplab report: error: no MLflow store at {store}: run `dvc repro` here "
                                     "first, or set MLFLOW_TRACKING_URI\n")
    from mlflow import MlflowClient

    MlflowClient(store).create_experiment("boston")  # a store, with a dataset's experiment and no run
    assert report(capsys, "--dataset", "boston") == (
        2, "", f"bplab report: error: no finished training run of boston in {store}: run `dvc repro` first\n")
    assert not (mlflow_repo / "report.html").exists()
