"""MLflow's tracking server with a UI that opens on the runs table: the ``mlflow.app`` plugins
``bplab-ui`` (``mlflow server --app-name bplab-ui``, what ``bplab ui`` runs) and
``bplab-ui-basic-auth`` (the same over MLflow's ``basic-auth`` app, for a team's server).

MLflow 3.17's UI shows an experiment as GenAI (traces, token usage) or as model training (the runs
table) by a per-browser setting, the sidebar's switch, kept in the browser's localStorage under
:data:`WORKFLOW_KEY` as JSON; a browser that has none gets GenAI, and no server flag changes that.
These apps serve the UI's page with a few lines of script that store *Model training* when the
browser has no setting yet, before the UI reads it. A setting the browser has, GenAI included,
is left as it is: a user's choice wins. Everything else is MLflow's server, unchanged.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import mlflow.server
from flask import Flask, Response

from bplab.ui import BASIC_AUTH_APP_NAME

# The UI's useLocalStorage hook keeps the value under `${key}_v${version}` as JSON;
# the workflow type's key is "mlflow.workflowType", version 1 (3.17.2's build).
WORKFLOW_KEY = "mlflow.workflowType_v1"
MODEL_TRAINING = "machine_learning"
# Runs before the UI's own (deferred) script; a browser without localStorage just gets MLflow's default.
LANDING_SCRIPT = (f"<script>try{{if(localStorage.getItem({json.dumps(WORKFLOW_KEY)})===null)"
                  f"localStorage.setItem({json.dumps(WORKFLOW_KEY)},{json.dumps(json.dumps(MODEL_TRAINING))})}}"
                  "catch(e){}</script>")
INDEX_ENDPOINT = "serve"  # mlflow.server's view of "/", the UI's one HTML page (the rest is routed after "#")


def landing_page(index_html: str) -> str:
    """MLflow's ``index.html`` with :data:`LANDING_SCRIPT` first in its ``<head>``."""
    head = index_html.find("<head>")
    at = head + len("<head>") if head >= 0 else 0
    return index_html[:at] + LANDING_SCRIPT + index_html[at:]


def with_landing(app: Flask) -> Flask:
    """``app`` (MLflow's Flask app) serving its UI page with :data:`LANDING_SCRIPT`; unchanged where
    the page is missing (an MLflow installed from source without its built UI)."""
    index = Path(app.static_folder or "") / "index.html"
    if not index.is_file():
        return app
    page = landing_page(index.read_text(encoding="utf-8"))

    def serve_landing_page() -> Response:
        response = Response(page, mimetype="text/html")
        # MLflow's page goes out with Last-Modified, which lets a browser reuse it without asking;
        # this one is always revalidated, so a browser never runs MLflow's copy in its place.
        response.headers["Cache-Control"] = "no-cache"
        return response

    app.view_functions[INDEX_ENDPOINT] = serve_landing_page
    return app


def _under_uvicorn() -> bool:
    # `mlflow server` tells its workers which server runs them (uvicorn needs the FastAPI app).
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    return _MLFLOW_SGI_NAME.get() == "uvicorn"


def create_app() -> Any:
    """``--app-name bplab-ui``: MLflow's server (FastAPI under uvicorn, Flask under gunicorn or
    waitress), its UI opening on the runs table."""
    app = with_landing(mlflow.server.app)
    if _under_uvicorn():
        from mlflow.server.fastapi_app import app as fastapi_app  # MLflow's, mounting the same Flask app

        return fastapi_app
    return app


def create_basic_auth_app() -> Any:
    """``--app-name bplab-ui-basic-auth``: MLflow's ``basic-auth`` app (same configuration: the
    ``MLFLOW_AUTH_CONFIG_PATH`` file, ``MLFLOW_FLASK_SERVER_SECRET_KEY``, the admin's first password),
    its UI opening on the runs table."""
    from mlflow.server.auth import create_app as basic_auth

    return basic_auth(with_landing(mlflow.server.app))


def _server_command_app_name() -> str | None:
    """The ``--app-name`` of the ``mlflow server`` command running this process, if it is one."""
    import click

    context = click.get_current_context(silent=True)
    return context.params.get("app_name") if context is not None else None


def bootstrap_basic_auth() -> None:
    """What ``mlflow server`` does before it starts its workers for ``--app-name basic-auth``, and only
    for that name: check the secret key and create the admin (one clear error, not workers that
    crash and restart forever), tell the workers it is done, and give its job runners their token."""
    from mlflow.environment_variables import (
        _MLFLOW_AUTH_ADMIN_BOOTSTRAPPED,
        _MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    )
    from mlflow.server import _bootstrap_basic_auth

    _bootstrap_basic_auth()
    # The command starts its workers with a copy of this environment.
    os.environ[_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name] = "true"
    if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():
        os.environ[_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN.name] = secrets.token_hex(32)


# `mlflow server --app-name X` imports X's module in its own process, before it starts the workers
# (to ask whether X is a factory): the one moment to do what it does for "basic-auth" by name.
if _server_command_app_name() == BASIC_AUTH_APP_NAME:
    bootstrap_basic_auth()
