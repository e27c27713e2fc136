"""What `bplab ui` refuses, with one line and exit status 2, and the server it would start.

Run by :func:`bplab.commands.main.main` in this process: each refusal ends before a server starts.
The server itself, in a browser, is tested in tests/e2e/test_bplab_ui.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.commands import ui
from bplab.testing.local_servers import free_port
from bplab.tracking import store
from support.processes import bplab_here


def refusal(*args: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The one line ``bplab ui ARGS`` ends with (exit status 2), having started no server."""

    def no_server(*args: object) -> None:
        pytest.fail(f"bplab ui was to refuse, and started a server: {args}")

    monkeypatch.setattr(ui, "run_server", no_server)
    done = bplab_here("ui", *args, capsys=capsys)
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bplab ui: error: "), err
    return lines[0]


def test_ui_refuses_a_port_in_use_a_tracking_server_and_basic_auth_without_its_key(
        mlflow_repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert refusal("--port", str(port), capsys=capsys, monkeypatch=monkeypatch) == \
            f"bplab ui: error: cannot listen on 127.0.0.1:{port}: Address already in use"

    monkeypatch.delenv(ui.SECRET_KEY_ENV, raising=False)
    line = refusal("--basic-auth", "--port", str(free_port()), capsys=capsys, monkeypatch=monkeypatch)
    assert f"--basic-auth needs {ui.SECRET_KEY_ENV}" in line

    monkeypatch.setenv(store.TRACKING_ENV, "https://ann:s3cret@mlflow.example.org/")
    line = refusal("--port", str(free_port()), capsys=capsys, monkeypatch=monkeypatch)
    assert "is a tracking server (https://***@mlflow.example.org/): open its own UI" in line
    assert "--app-name bplab-ui" in line and "s3cret" not in line


def test_ui_serves_the_default_store_with_its_artifacts_through_the_app_that_lands_on_runs(
        mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (mlflow_repo / "sub").mkdir()
    monkeypatch.chdir(mlflow_repo / "sub")  # the repository's store and artifacts, from anywhere in it
    command = ui.server_command(store.tracking_uri(), "127.0.0.1", 5000, 1, basic_auth=False)
    assert command[1:] == ["-m", "mlflow", "server", "--app-name", "bplab-ui", "--host", "127.0.0.1", "--port", "5000",
                           "--workers", "1", "--backend-store-uri", f"sqlite:///{mlflow_repo / 'mlflow.db'}",
                           "--artifacts-destination", str(mlflow_repo / "mlartifacts")]
    assert ui.server_command("sqlite:///x.db", "::", 5001, 2, basic_auth=True)[4:6] == ["--app-name",
                                                                                        "bplab-ui-basic-auth"]
    assert ui.browser_url("0.0.0.0", 5000) == "http://127.0.0.1:5000"
    assert ui.browser_url("::1", 5000) == "http://[::1]:5000"
    # the names `mlflow server --app-name` knows: the installed package's entry points
    listed = subprocess.run([sys.executable, "-c", "from mlflow.utils.plugins import get_entry_points; "
                             "print(sorted(e.name + '=' + e.value for e in get_entry_points('mlflow.app')))"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert "'bplab-ui=bplab.ui.app:create_app'" in listed
    assert "'bplab-ui-basic-auth=bplab.ui.app:create_basic_auth_app'" in listed
