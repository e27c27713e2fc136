"""The tracking store's kinds, told apart without opening them."""

from __future__ import annotations

import pytest

from bplab.tracking import store


@pytest.mark.parametrize(("uri", "in_process"), [
    ("sqlite:////tmp/repo/mlflow.db", True),
    ("postgresql+psycopg://mlflow:secret@127.0.0.1:5432/mlflow", True),
    ("mysql://db.example/mlflow", True),
    ("http://127.0.0.1:5000", False),
    ("https://alice:s3cret@tracking.example/", False),
    ("file:///tmp/mlruns", False)])
def test_a_database_store_is_opened_in_process_and_a_server_is_not(uri: str, in_process: bool) -> None:
    assert store.opened_in_process(uri) is in_process
