"""A tracking server a team shares: a real PostgreSQL behind a real `mlflow server` (artifacts
proxied), with the pipeline, a team's load, and a restart against it.

One cluster and one server for the file (bench/tracking_load.py's): the pipeline's runs, the load
and the restart all go to it, each checked by its own runs. The load and the restart are the
bench's short version (`tracking_load.QUICK`); `make bench` runs the full one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bplab.testing.local_servers import MlflowServer, postgres_bin
from bplab.testing.scratch import REPO, copy_repository, stage_env
from support.pipeline import TINY_PIPELINE
from support.processes import run, unavailable

sys.path.insert(0, str(REPO / "bench"))
import tracking_load  # noqa: E402 (bench/ is not a package)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server --backend-store-uri postgresql+psycopg://...` over a new cluster."""
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")
    with tracking_load.tracking_server("postgresql", tmp_path_factory.mktemp("postgres-server")) as running:
        yield running


def _postgres_runs(server: MlflowServer) -> set[str]:
    """The run ids in the server's PostgreSQL database, read with SQL, not through MLflow."""
    import psycopg

    uri = server.backend_uri.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(uri) as connection:
        return {row[0] for row in connection.execute("SELECT run_uuid FROM runs")}


def test_the_pipeline_trains_evaluates_and_registers_against_postgresql(server: MlflowServer, tmp_path: Path,
                                                                        mirror: Path) -> None:
    import mlflow
    import torch
    from mlflow import MlflowClient

    repo = copy_repository(tmp_path / "repo", TINY_PIPELINE)
    env = stage_env(repo, MLFLOW_TRACKING_URI=server.uri)
    chosen = {"flower": ("flower_module", 2), "boston": ("boston_module", 13), "mnist": ("mnist_mlp", 784)}
    run(["dvc", "repro", *(f"evaluate@{variant}" for variant, _ in chosen.values())], repo, env=env)

    client = MlflowClient(server.uri)
    mlflow.set_tracking_uri(server.uri)
    try:
        for dataset, (variant, inputs) in chosen.items():
            champion = client.get_model_version_by_alias(dataset, "champion")
            assert champion.tags["variant"] == variant
            run_info = client.get_run(champion.run_id)
            assert run_info.info.status == "FINISHED" and run_info.info.artifact_uri.startswith("mlflow-artifacts:")
            assert run_info.info.run_id in _postgres_runs(server)  # the runs live in PostgreSQL
            model = mlflow.pytorch.load_model(f"models:/{dataset}@champion")  # over HTTP, through the proxy
            assert model(torch.zeros(3, inputs)).shape[0] == 3
    finally:
        mlflow.set_tracking_uri(None)
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()  # nothing stayed local

    listed = run([sys.executable, "-m", "bplab.compare", "--out", str(tmp_path / "compare.md")], repo, env=env).stdout
    assert f"MLflow store: {server.uri}" in listed
    for variant, _ in chosen.values():
        assert variant in listed
    markdown = (tmp_path / "compare.md").read_text()
    assert all(f"## {dataset}" in markdown for dataset in chosen)


def test_runs_adding_the_same_new_dataset_at_once_each_get_it(server: MlflowServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's store looks for a dataset and adds it in one transaction; on PostgreSQL two runs adding
    the same new one at once collide (HTTP 400, duplicate key), which the recorder asks again."""
    import mlflow
    from mlflow import MlflowClient

    from bplab.tracking.recorder import Recorder, ensure_experiment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    experiment = ensure_experiment("dataset-race")
    rounds, together = 10, threading.Barrier(2)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32)

    def training(worker: int) -> str:
        run = mlflow.start_run(experiment_id=experiment, run_name=f"worker-{worker}")  # this thread's active run
        recorder = Recorder(run.info.run_id, experiment)
        try:
            for round_ in range(rounds):
                together.wait(timeout=60)
                recorder.log_training_data(x, y, REPO, "race-train", digest=f"round-{round_}")
        finally:
            mlflow.end_run()
        return run.info.run_id

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(training, range(2)))
    client = MlflowClient(server.uri)
    for run_id in runs:
        digests = sorted(d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs)
        assert digests == sorted(f"round-{r}" for r in range(rounds))


def test_a_teams_load_on_postgresql_arrives_whole(server: MlflowServer, tmp_path: Path) -> None:
    """4 trainings and 2 evaluate stages at once, then logging clients: every point arrives, every
    run ends FINISHED, the champion is the best version. (`make bench` runs the same, bigger, on
    PostgreSQL and on sqlite side by side; here sqlite's concurrent writers are test_reliability's.)"""
    sizes = tracking_load.QUICK
    stages = tracking_load.stage_load(server.uri, tmp_path / "stage-load", sizes)
    logging_only = tracking_load.log_only_load(server.uri, sizes)
    assert stages["trainings"] == 4 and stages["evaluates"] == 2
    assert stages["log_batch"]["calls"] >= 4  # every training timed its writes
    assert len(stages["versions"]) >= 2
    assert logging_only["runs"] == sizes.clients * sizes.runs_per_client


def test_a_server_restart_mid_run_loses_and_doubles_nothing(server: MlflowServer, tmp_path: Path) -> None:
    result = tracking_load.restart_during_training(server, tmp_path, tracking_load.QUICK)
    assert len(result["outcomes"]) == tracking_load.QUICK.restart_trainings
    assert set(result["outcomes"].values()) <= {"rode it out", "failed clearly, resumed"}
    assert result["downtime_s"] > 0
