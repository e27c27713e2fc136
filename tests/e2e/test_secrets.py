"""Secrets planted in a pipeline run reach neither what it printed nor its MLflow store.

A clone of the tiny pipeline downloads Boston again from a private mirror on 127.0.0.1 (a real
HTTP server that wants a basic-auth login), named in params.yaml by a URL with the login in it,
after a source whose unencoded password makes its URL malformed; then `dvc repro` trains a tiny
variant (the data it downloads is the baseline's, so its preprocessing does not run again).
A `bplab sweep` (in-process: a process of its own would add seconds of imports) then resumes a
study held in a real PostgreSQL whose password holds '/', '?' and '#', taken by SQLAlchemy as
written. Every secret, in pieces (a partial leak counts), is searched
for in everything both commands printed, in ``mlflow.db`` and in every file under ``mlartifacts/``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from bplab.commands import main
from bplab.testing.local_servers import PostgreSQL, postgres_bin
from bplab.testing.scratch import commit, set_params, stage_env
from support.mirror_server import LocalHTTPServer
from support.processes import run, unavailable

VARIANT = "boston_module"
USER = "m1rrorL0gin"
MALFORMED = "B4dMirr0r/Kw0rdX"  # unencoded '/': not a URL any HTTP client reads; that source fails
PASSWORD = "G00dMirr0r/Kw0rdY"  # percent-encoded in its URL, as a URL needs
SIGNATURE = "S1gnatur3Z"  # a signed link's query string
SWEEP_PASSWORD = "Sw33pA/Sw33pB?Sw33pC#Sw33pD"


def pieces(secret: str) -> set[str]:
    """What must not show of ``secret``: its parts between '/', '?' and '#', and the whole of it."""
    return {secret, *re.split(r"[/?#]", secret)}


SECRETS = {USER, SIGNATURE} | pieces(MALFORMED) | pieces(PASSWORD) | pieces(SWEEP_PASSWORD)


def leaks(text: bytes, where: str) -> list[str]:
    return [f"{secret!r} in {where}" for secret in sorted(SECRETS) if secret.encode() in text]


def plant_a_study(sweep_args: list[str]) -> None:
    """The study of the sweep ``sweep_args``, holding its one trial already: the sweep records and
    reports it without queueing an experiment. Made as the sweep would (its direction, its params)."""
    import optuna

    from bplab.sweep import search

    args = main.build_parser().parse_args(sweep_args)
    s = search.setup(args)
    distributions = {d.name: d.distribution() for d in s.dimensions}
    study = optuna.create_study(study_name=s.study, storage=args.storage,
                                direction="maximize" if s.maximize else "minimize")
    study.add_trial(optuna.trial.create_trial(params={d.name: d.extremes()[0] for d in s.dimensions},
                                              distributions=distributions, value=1.0))


def test_planted_secrets_reach_neither_the_output_nor_the_store(tmp_path: Path, mirror: Path, pipeline_clone: Path,
                                                                 capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")
    (tmp_path / "http").mkdir()
    server = LocalHTTPServer(tmp_path / "http")
    try:
        server.require_login(USER, PASSWORD)
        good = server.put("private/boston.csv", (mirror / "boston" / "boston.csv").read_bytes())
        host = server.base_url.removeprefix("http://")
        sources = [{"url": f"http://{USER}:{MALFORMED}@{host}/private/boston.csv", "format": "csv"},
                   {"url": f"http://{USER}:{PASSWORD.replace('/', '%2F')}@{host}/private/boston.csv"
                           f"?X-Amz-Signature={SIGNATURE}", "format": "csv"}]
        repo = pipeline_clone
        set_params(repo, {"data.boston.download.sources": sources, f"train.{VARIANT}.epochs": 2})
        commit(repo, "private sources")
        env = stage_env(repo)
        env.pop("BPLAB_DATA_MIRROR", None)  # the private mirror is the only way to the data
        started = time.time_ns() // 1_000_000  # MLflow's start times: the runs made from here on are this test's
        repro = run(["dvc", "repro", f"train@{VARIANT}"], repo, env=env)  # train logs params, dvc.lock, tags
        assert "Running stage 'download@boston'" in repro.stdout and f"Running stage 'train@{VARIANT}'" in repro.stdout
        assert server.requests == ["/private/boston.csv"]  # the malformed source sent nothing
        assert server.authorizations == [server.login]

        cluster = PostgreSQL(database="optuna", role="sweeper")
        cluster.password = SWEEP_PASSWORD  # the role is made with it; SQLAlchemy takes it unencoded
        with cluster:
            monkeypatch.chdir(repo)
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the copy's own mlflow.db
            args = ["sweep", VARIANT, "--param", "lr=log:1e-3:0.1", "--trials", "1", "--study", "s",
                    "--storage", cluster.uri]
            plant_a_study(args)
            capfd.readouterr()
            assert main.main(args) == 0
            sweep = capfd.readouterr()
        shown = f"postgresql+psycopg://***@127.0.0.1:{cluster.port}/optuna"
        assert f"study s in {shown} (resumed with 1 trials)" in sweep.out
    finally:
        server.close()
        import mlflow

        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; keep tests independent

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    since = f"attributes.start_time >= {started}"  # the baseline's runs are in the clone's store too
    [download] = client.search_runs([client.get_experiment_by_name("boston-data").experiment_id],
                                    f"attributes.run_name = 'download' and {since}")
    assert download.data.params["source.boston.csv"] == good.replace("http://", "http://***@")
    boston = client.get_experiment_by_name("boston").experiment_id
    [study_run] = client.search_runs([boston], "tags.sweep_study = 's'")
    assert study_run.data.tags["sweep_storage"] == shown
    [training] = client.search_runs([boston], f"attributes.run_name = '{VARIANT}' and {since}")
    artifacts = [path for path in (repo / "mlartifacts").rglob("*") if path.is_file()]
    trained = Path(training.info.artifact_uri.removeprefix("file://"))
    assert (trained / "reproduce" / "dvc.lock").is_file() and trained.is_relative_to(repo / "mlartifacts")
    found = leaks(f"{repro.stdout}{repro.stderr}".encode(), "dvc repro's output")
    found += leaks(f"{sweep.out}{sweep.err}".encode(), "bplab sweep's output")
    for path in [*repo.glob("mlflow.db*"), *artifacts]:
        found += leaks(path.read_bytes(), str(path.relative_to(repo)))
    assert found == []
