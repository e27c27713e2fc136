"""A real `mlflow server --app-name basic-auth` on 127.0.0.1: the pipeline logs in as a user of it,
wrong credentials stop a stage with one line, and a request without credentials is refused.

One server for the whole file (starting it costs seconds): its own sqlite stores, users and
artifacts in a temporary folder, an admin whose password is made up here, and one user.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bplab.testing.local_servers import MlflowServer
from bplab.testing.scratch import REPO, set_params, stage_env
from bplab.tracking import store

# The server's auth configuration, as the docs show it (Shared tracking server). READ for everyone by default: a user
# reads every experiment and model, and may create experiments and registered models, which they
# then manage; writing into someone else's needs a grant. The credential cache spares each request
# a password-hash check (0.28 s of the server's CPU here: this file's train and evaluate took 28 s
# without it, 8 s with it).
AUTH_INI = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{users_db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""
USER = "alice"
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class AuthServer:
    """The running server: its URI, its admin's and its user's passwords, and a folder of its own."""

    uri: str
    admin_password: str
    password: str  # USER's
    admins_experiment: str  # an experiment the admin made: USER may read it, not write to it

    def as_admin(self, method: str, endpoint: str, **kwargs) -> requests.Response:
        """A REST call to the server with the admin's credentials."""
        return requests.request(method, f"{self.uri}{endpoint}", auth=("admin", self.admin_password),
                                timeout=30, **kwargs)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """The server, with USER created through the REST API by the admin."""
    root = tmp_path_factory.mktemp("auth-server")
    (root / "basic_auth.ini").write_text(AUTH_INI.format(users_db=root / "users.db"))
    admin_password = secrets.token_urlsafe(16)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,  # the admin's first password; none ships with MLflow
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # CSRF key of the sign-up page
    with MlflowServer(root, app_name="basic-auth", env=env) as running:
        server = AuthServer(running.uri, admin_password, secrets.token_urlsafe(16), "")
        created = server.as_admin("POST", "/api/2.0/mlflow/users/create",
                                  json={"username": USER, "password": server.password})
        assert created.status_code == 200, created.text
        made = server.as_admin("POST", "/api/2.0/mlflow/experiments/create", json={"name": "admins-only"})
        assert made.status_code == 200, made.text
        yield AuthServer(server.uri, admin_password, server.password, made.json()["experiment_id"])


def _stage(workspace: Path, stage: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"stages/{stage}.py", "boston_module"], cwd=workspace, text=True,
                          env=env, capture_output=True, timeout=300)


@pytest.fixture
def stage_dir(workspace: Path) -> Path:
    """The tiny workspace with the stage scripts and params.yaml: boston_module for 3 epochs."""
    shutil.copytree(REPO / "stages", workspace / "stages")
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    set_params(workspace, {"train.boston_module.epochs": 3, "train.boston_module.batch_size": 16})
    return workspace


def test_the_pipeline_trains_evaluates_and_registers_as_a_user_of_the_server(
        stage_dir: Path, auth_server: AuthServer) -> None:
    env = stage_env(MLFLOW_TRACKING_URI=auth_server.uri, MLFLOW_TRACKING_USERNAME=USER,
                    MLFLOW_TRACKING_PASSWORD=auth_server.password)
    for stage in ("train", "evaluate"):
        done = _stage(stage_dir, stage, env)
        assert done.returncode == 0, done.stderr
        assert auth_server.password not in done.stdout + done.stderr
    assert "registered boston version 1; champion: version 1" in done.stderr

    record = json.loads((stage_dir / "models/boston_module/run.json").read_text())
    run = auth_server.as_admin("GET", "/api/2.0/mlflow/runs/get", params={"run_id": record["run_id"]}).json()["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    assert {m["key"] for m in run["data"]["metrics"]} >= {"train_loss", "test_rmse"}
    champion = auth_server.as_admin("GET", "/api/2.0/mlflow/registered-models/alias",
                                    params={"name": "boston", "alias": "champion"}).json()["model_version"]
    assert (champion["version"], champion["run_id"]) == ("1", record["run_id"])
    # The server knows who made them: USER manages the experiment and the registered model.
    for resource_type, resource_id in (("experiment", record["experiment_id"]), ("registered_model", "boston")):
        granted = auth_server.as_admin("GET", "/api/3.0/mlflow/users/permissions/get", params={
            "username": USER, "resource_type": resource_type, "resource_id": resource_id})
        assert granted.json()["permission"] == "MANAGE", granted.text
    assert not (stage_dir / "mlflow.db").exists()  # nothing went to the local default store


def test_wrong_credentials_stop_the_stage_with_one_line_naming_the_server(
        stage_dir: Path, auth_server: AuthServer) -> None:
    wrong = secrets.token_urlsafe(16)
    done = _stage(stage_dir, "train", stage_env(MLFLOW_TRACKING_URI=auth_server.uri, MLFLOW_TRACKING_USERNAME=USER,
                                                MLFLOW_TRACKING_PASSWORD=wrong))
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"train@boston_module: error: credentials refused by the MLflow tracking server at "
                      f"{auth_server.uri} (MLFLOW_TRACKING_URI): HTTP 401 for user 'alice'; check "
                      "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"], done.stderr
    assert wrong not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert not (stage_dir / "models").exists() and not (stage_dir / "checkpoints").exists()


def test_a_request_without_credentials_is_refused(auth_server: AuthServer) -> None:
    answer = requests.get(f"{auth_server.uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                          timeout=30)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
    assert requests.get(f"{auth_server.uri}/health", timeout=30).status_code == 200  # left open for probes


def test_the_check_before_a_run_tells_missing_from_refused_credentials(
        auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bplab.errors import TrackingRefused

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TrackingRefused) as missing:
        store.check_reachable(auth_server.uri)
    assert str(missing.value) == (
        f"the MLflow tracking server at {auth_server.uri} (MLFLOW_TRACKING_URI) requires credentials (HTTP 401) "
        "and none are set: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
        "to an account of that server")

    in_uri = auth_server.uri.replace("http://", f"http://{USER}:wrong-{auth_server.password}@")
    with pytest.raises(TrackingRefused, match=r"at http://\*\*\*@127\.0\.0\.1:\d+ .*HTTP 401 for the user in") as bad:
        store.check_reachable(in_uri)
    assert auth_server.password not in str(bad.value)

    (tmp_path / ".mlflow").mkdir()  # MLflow's credentials file counts, as it does for MLflow's client
    (tmp_path / ".mlflow/credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {USER}\nmlflow_tracking_password = {auth_server.password}\n")
    store.check_reachable(auth_server.uri)


def test_a_refusal_after_the_check_ends_the_stage_with_one_line(
        auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bplab.pipeline.process import stage_process

    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    store.check_reachable(auth_server.uri)  # the credentials are good: USER may read everything
    with pytest.raises(SystemExit) as ended, stage_process("train@boston_module"):
        try:
            MlflowClient(auth_server.uri).create_run(auth_server.admins_experiment)  # but not write here
        except MlflowException as exc:
            assert exc.error_code == "PERMISSION_DENIED"
            raise
    gc.unfreeze()  # stage_process froze this process's objects, as at the end of a stage
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        f"train@boston_module: error: permission denied by the MLflow tracking server at {auth_server.uri} "
        "(MLFLOW_TRACKING_URI): HTTP 403 for user 'alice' on /api/2.0/mlflow/runs/create; its admin can grant it "
        "(EDIT or MANAGE on the experiment or registered model)\n")


def test_a_login_in_the_tracking_uri_is_never_printed(
        mlflow_repo: Path, auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from bplab.tracking.recorder import Recorder

    for name in (*CREDENTIALS, store.LINKS_ENV):
        monkeypatch.delenv(name, raising=False)
    login = f"http://{USER}:{auth_server.password}@"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri.replace("http://", login))  # MLflow's client takes it
    with Recorder.run("alice-by-uri", "train", {"stage": "train"}) as recorder:
        recorder.log_metrics({"x": 1.0})
    printed = capfd.readouterr()
    assert auth_server.password not in printed.out + printed.err  # MLflow printed "View run ... at <URI>/#/..."
    assert requests.get(f"{auth_server.uri}/api/2.0/mlflow/runs/get", params={"run_id": recorder.run_id},
                        auth=(USER, auth_server.password), timeout=30).json()["run"]["info"]["status"] == "FINISHED"
