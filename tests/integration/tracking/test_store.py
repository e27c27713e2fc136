"""MLflow conventions: where the store lives, how runs are tagged and how they end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.tracking import store


def test_repo_root_of_a_dvc_temp_experiment_is_the_original_repository(tmp_path: Path) -> None:
    (tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12" / ".dvc").mkdir(parents=True)
    (tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages").mkdir()
    assert store.repo_root(tmp_path / ".dvc/tmp/exps/tmpab12/stages") == tmp_path
    assert store.repo_root(tmp_path / ".dvc") == tmp_path


def test_default_store_is_sqlite_at_the_repository_root(mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (mlflow_repo / "stages").mkdir()
    monkeypatch.chdir(mlflow_repo / "stages")
    assert store.tracking_uri() == f"sqlite:///{mlflow_repo / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"


def test_run_tags_include_dvc_exp_when_set(mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lively-lark")
    tags = store.run_tags(dataset="mnist", stage="train", variant="mnist_mlp")
    assert tags["dvc_exp"] == "lively-lark"
    assert (tags["dataset"], tags["stage"], tags["variant"]) == ("mnist", "train", "mnist_mlp")


def test_flatten() -> None:
    assert store.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://alice:s3cret@tracking.example:5000/api?token=abc", "http://***@tracking.example:5000/api"),
    ("https://tracking.example/?sig=xyz", "https://tracking.example/"),
    ("postgresql+psycopg://mlflow:pw@db:5432/mlflow", "postgresql+psycopg://***@db:5432/mlflow"),
    ("sqlite:////repo/mlflow.db", "sqlite:////repo/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    # SQLAlchemy takes a password with '/', '?' or '#' as it is: its password runs to the '@'.
    ("postgresql+psycopg://bob:pa/ss@db/optuna", "postgresql+psycopg://***@db/optuna"),
    ("postgresql://bob:pa?ss@db:5432/optuna", "postgresql://***@db:5432/optuna"),
    ("mysql://bob:pa#ss@db/optuna?charset=utf8", "mysql://***@db/optuna"),
    ("postgresql://bob:p@ss/w?r#d@db/optuna", "postgresql://***@db/optuna"),  # '@' too: hidden to the last one
    ("https://alice:pa%2Fss@mirror.example/mnist/", "https://***@mirror.example/mnist/"),
    ("https://ghp_t0ken@github.com/org/repo.git", "https://***@github.com/org/repo.git"),  # a token as user name
    ("https://b.s3.amazonaws.com/k.gz?X-Amz-Signature=5ig&X-Amz-Credential=AKIA", "https://b.s3.amazonaws.com/k.gz"),
    # S3: an endpoint with an access key in it (an AWS secret holds '/' and '+'), a presigned
    # path-style link of a local endpoint, an s3:// URL with a key, an endpoint as an assignment.
    ("http://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY@127.0.0.1:9000/?X-Amz-Signature=5ig",
     "http://***@127.0.0.1:9000/"),
    ("http://127.0.0.1:9000/team/mlflow/1/m-1/artifacts/model.pth?X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=5ig",
     "http://127.0.0.1:9000/team/mlflow/1/m-1/artifacts/model.pth"),
    ("s3://AKIAIOSFODNN7EXAMPLE:wJalr/K7+bPx@team/dvc", "s3://***@team/dvc"),
    ("MLFLOW_S3_ENDPOINT_URL=https://AKIAIOSFODNN7EXAMPLE:wJalr/K7+bPx@s3.example:9000",
     "MLFLOW_S3_ENDPOINT_URL=https://***@s3.example:9000"),
    ("s3://team/mlflow", "s3://team/mlflow"),
    ("https://mirror.example/f.gz#access_token=t0k", "https://mirror.example/f.gz"),
    ("https://cdn.example/npm/pkg@1.0/f.js", "https://cdn.example/npm/pkg@1.0/f.js"),  # '@' in a path: no login
    ("https://host:8080/a@b", "https://***@b"),  # SQLAlchemy would read '8080/a' as a password: hidden
    ("data/raw/boston", "data/raw/boston"),
])
def test_redact_hides_credentials_and_query_strings(uri: str, shown: str) -> None:
    assert store.redact(uri) == shown


def test_redact_hides_them_in_any_text_holding_urls() -> None:
    message = ("could not open 'postgresql+psycopg://bob:Pa55/w?rd#1@db/optuna': timeout; "
               "see https://mirror.example/f.gz?sig=S1gnature. (nothing else)")
    assert store.redact(message) == ("could not open 'postgresql+psycopg://***@db/optuna': timeout; "
                                     "see https://mirror.example/f.gz (nothing else)")
    packed = '["https://m1.example/a?sig=S1gnature","https://u:Pa55/w?rd#2@m2.example/b","x://y:Pa55w@z"]'
    shown = store.redact(packed)  # URLs with no space between them: each one is redacted
    assert "S1gnature" not in shown and "Pa55" not in shown and "rd#" not in shown
    assert shown.startswith('["https://m1.example/a')
    assert store.redact_all({"mirrors": [packed], "note": message, "n": 3}) == \
        {"mirrors": [shown], "note": store.redact(message), "n": 3}


@pytest.fixture
def forward_proxy():
    """A real HTTP forward proxy on 127.0.0.1 that answers every request itself, and the URLs it saw."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            seen.append(self.path)  # a proxy receives the absolute URL
            self.send_response(200)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_reachability_check_goes_through_the_proxy_like_mlflow_does(forward_proxy, monkeypatch) -> None:
    from bplab.errors import TrackingUnavailable

    proxy, seen = forward_proxy
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    store.check_reachable("http://tracking.invalid:5000")  # only the proxy can reach this name
    assert seen == ["http://tracking.invalid:5000/api/2.0/mlflow/experiments/search?max_results=1"]

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "tracking.invalid")
    with pytest.raises(TrackingUnavailable, match=r"cannot reach the MLflow tracking server at http://tracking.invalid:5000"):
        store.check_reachable("http://tracking.invalid:5000", timeout_s=2)
    assert len(seen) == 1


# Variables whose presence turns MLflow 3.17's telemetry off by itself (mlflow.telemetry.utils).
MLFLOW_SEES_AS_CI = {"CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                     "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                     "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK"}


def test_mlflow_clients_of_the_pipeline_retry_briefly_and_send_no_telemetry() -> None:
    """In a process outside CI (MLflow itself turns telemetry off under CI=true), importing the
    pipeline before mlflow turns MLflow's telemetry off: its thread would delete a
    variable from os.environ while the metrics writer's requests read the environment."""
    code = ("import os; import bplab.tracking.store; import mlflow; "
            "from mlflow.telemetry.utils import is_telemetry_disabled; "
            "print(is_telemetry_disabled(), os.environ.get('_MLFLOW_TELEMETRY_SESSION_ID'), "
            "os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'])")
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_SEES_AS_CI | {"MLFLOW_DISABLE_TELEMETRY"}}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert shown.split() == ["True", "None", "4"]
    wanted = subprocess.run([sys.executable, "-c", code], env=env | {"MLFLOW_DISABLE_TELEMETRY": "false"},
                            capture_output=True, text=True, check=True).stdout
    assert wanted.split()[0] == "False"  # what the default prevents
    user = subprocess.run([sys.executable, "-c", code], env=env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"},
                          capture_output=True, text=True, check=True).stdout
    assert user.split()[-1] == "9"  # a user's own setting wins


def test_process_alive_tells_a_live_pid_a_dead_one_and_a_value_that_names_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert store.process_alive(str(os.getpid())) is True and store.process_alive(os.getpid()) is True
    assert store.process_alive(str(child.pid)) is False
    # What the recorder leaves RUNNING and the sweep takes over: a tag or attribute that names no process.
    assert [store.process_alive(v) for v in (None, "", "abc", "0", "-1")] == [None] * 5
