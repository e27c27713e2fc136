"""``bplab ui``: MLflow's UI over the project's store, opening experiments on their runs table.

It runs ``mlflow server --app-name bplab-ui`` (:mod:`bplab.ui.app`; ``bplab-ui-basic-auth`` with
``--basic-auth``) over the store the stages log to, serving the artifacts where they keep them, so
pictures and models show. Imports stay light: mlflow is imported by the server it starts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from bplab.errors import BplabError
from bplab.pipeline.process import this_environment_first
from bplab.tracking import store
from bplab.ui import APP_NAME, BASIC_AUTH_APP_NAME

DEFAULT_PORT = 5000  # mlflow ui's
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
# The server's own defaults for a UI on one's own machine: no GenAI job runners (processes that
# evaluate LLM judges, which training runs never use), one worker (a second buys nothing for one user).
SERVER_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class UiError(BplabError):
    """The UI cannot be served as asked: the store is a server already, or basic-auth lacks its key."""


def served_store() -> str:
    """The store to serve (:func:`bplab.tracking.store.tracking_uri`), when it is one a server opens itself."""
    uri = store.tracking_uri()
    if not store.opened_in_process(uri):
        raise UiError(f"{store.TRACKING_ENV} is a tracking server ({store.redact(uri)}): open its own UI; started "
                      f"with --app-name {APP_NAME} (or {BASIC_AUTH_APP_NAME}) it opens on the runs table too")
    return uri


def server_command(uri: str, host: str, port: int, workers: int, basic_auth: bool) -> list[str]:
    """The ``mlflow server`` command line that serves ``uri``'s UI on ``host:port``."""
    # Runs made with the default store name their artifacts by path (mlartifacts/<experiment>/...),
    # which the server reads directly; anything uploaded through it goes to the same folder.
    artifacts = store.repo_root() / "mlartifacts"
    return [sys.executable, "-m", "mlflow", "server", "--app-name", BASIC_AUTH_APP_NAME if basic_auth else APP_NAME,
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", uri, "--artifacts-destination", str(artifacts)]


def browser_url(host: str, port: int) -> str:
    """The address to open in a browser on this machine for a server listening on ``host:port``."""
    if host in {"0.0.0.0", "::", ""}:  # every address: this machine's own is one of them
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop_with_parent() -> None:
    """In the server's process before it starts: get SIGTERM when ``bplab ui`` dies, even by SIGKILL
    (Linux's ``PR_SET_PDEATHSIG``; elsewhere the server outlives a killed ``bplab ui``)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_server(command: list[str], env: dict[str, str]) -> int:
    """Run ``mlflow server`` until it ends, passing it Ctrl-C and SIGTERM once; its exit status.

    The server runs in a process group of its own: a terminal's Ctrl-C reaches every process of
    the foreground group, and uvicorn, given SIGINT by the terminal and again by ``mlflow server``
    (which passes its signals on), stops with a traceback. Here it gets one, through ``mlflow server``.
    """
    server = subprocess.Popen(command, env=env, process_group=0, preexec_fn=_stop_with_parent)

    def pass_on(signum: int, _frame: object) -> None:
        if server.poll() is None:
            server.send_signal(signum)

    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, pass_on)
    status = server.wait()
    return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell says


def serve(host: str, port: int, workers: int, basic_auth: bool) -> int:
    """Check the store (and basic-auth's secret key), say where to look, and serve until Ctrl-C."""
    uri = served_store()
    if basic_auth and not os.environ.get(SECRET_KEY_ENV):
        raise UiError(f"--basic-auth needs {SECRET_KEY_ENV} (the sign-up page's CSRF key, e.g. "
                      f"`export {SECRET_KEY_ENV}=$(openssl rand -hex 16)`), and on a first start "
                      "MLFLOW_AUTH_ADMIN_PASSWORD for the admin")
    command = server_command(uri, host, port, workers, basic_auth)
    env = SERVER_DEFAULTS | this_environment_first()  # a value the user set wins
    print(f"bplab ui: {browser_url(host, port)} shows {store.redact(uri)}, experiments open on their runs "
          f"table{', for its users (basic-auth)' if basic_auth else ''} (Ctrl-C stops)", file=sys.stderr, flush=True)
    return run_server(command, env)
