"""`bplab gc --yes` against a real `mlflow server`: without the server's database the runs are only
deleted there (and it says so); with it (--backend-store-uri) they are removed for good, their
artifacts through the server's artifact proxy; the champion's run stays either way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bplab.testing.local_servers import MlflowServer
from bplab.tracking import retention, store
from bplab.tracking.registry import CHAMPION
from support.processes import bplab_here

DATASET = "boston"


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    done = bplab_here("gc", "--only", "mlflow", "--yes", *args, capsys=capsys)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout


def test_runs_are_deleted_on_a_server_and_removed_for_good_with_its_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.chdir(tmp_path)
    with MlflowServer(tmp_path) as server:
        monkeypatch.setenv(store.TRACKING_ENV, server.uri)
        client = MlflowClient(server.uri)
        experiment = client.create_experiment(DATASET)
        old = int(time.time() * 1000) - 30 * retention.DAY_MS
        runs = {}
        for role in ("failed", "champion"):
            runs[role] = client.create_run(experiment, start_time=old, run_name=role).info.run_id
            client.log_text(runs[role], "x\n", "notes.txt")
            client.set_terminated(runs[role], "FAILED")
        model = client.create_logged_model(experiment, source_run_id=runs["champion"])
        client.create_registered_model(DATASET)
        client.create_model_version(DATASET, f"models:/{model.model_id}", runs["champion"], model_id=model.model_id)
        client.set_registered_model_alias(DATASET, CHAMPION, "1")
        artifacts = {role: tmp_path / "artifacts" / experiment / run_id / "artifacts" for role, run_id in runs.items()}
        assert all((folder / "notes.txt").is_file() for folder in artifacts.values())

        out = gc(capsys)
        assert f"deleted  run               {runs['failed']}" in out
        assert f"note: {server.uri} is a tracking server: the runs and logged models are deleted there" in out
        assert out.splitlines()[-1].startswith("removed: nothing; deleted on the server, still in its database: 1 run;")
        assert client.get_run(runs["failed"]).info.lifecycle_stage == "deleted"
        assert (artifacts["failed"] / "notes.txt").is_file()

        out = gc(capsys, "--backend-store-uri", server.backend_uri)
        assert f"removed  run               {runs['failed']}" in out and "note:" not in out
        with pytest.raises(MlflowException):
            client.get_run(runs["failed"])
        assert not artifacts["failed"].exists()  # removed through the server's artifact proxy
        assert client.get_run(runs["champion"]).info.lifecycle_stage == "active"
        assert (artifacts["champion"] / "notes.txt").is_file()
