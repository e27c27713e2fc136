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


@pytest.mark.parametrize(("uri", "host"), [
    ("https://mlflow.example.org", "mlflow.example.org"),  # the scheme's own port: requests sends no port
    ("http://mlflow.example.org:5000/", "mlflow.example.org:5000"),
    ("http://Mlflow.Example.org:80", "mlflow.example.org"),
    ("http://alice:s3cret@[::1]:5000", "[::1]:5000")])
def test_a_host_header_refused_by_the_server_is_named_as_the_client_sent_it(
        uri: str, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's 403 for a Host its --allowed-hosts leaves out, as MLflow's client raises it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    refused = MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200. "
                              "Response body: 'Invalid Host header - possible DNS rebinding attack detected'",
                              error_code=PERMISSION_DENIED)
    line = store.refusal(refused)
    assert line == (f"the MLflow tracking server at {store.redact(uri)} (MLFLOW_TRACKING_URI) refused the Host header "
                    f"'{host}' (HTTP 403 \"Invalid Host header\" on /api/2.0/mlflow/runs/create): it is not in the "
                    f"server's --allowed-hosts; its admin adds {host} there (names with their ports, comma-separated), "
                    "or use an address it lists")
    assert "s3cret" not in line
