"""`bplab report` on a store with nothing to report: one line saying why, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bplab.commands.main import main


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    excepthook = sys.excepthook  # main redacts tracebacks for its whole process
    try:
        code = main(["report", *args])
    finally:
        sys.excepthook = excepthook
    out, err = capsys.readouterr()
    return code, out, err


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
