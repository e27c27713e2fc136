"""MLflow conventions of the pipeline: where the store is, how runs are tagged, how URIs are shown.

Nothing here imports mlflow: :mod:`bplab.recorder` is the one module that writes to it.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bplab.errors import TrackingUnavailable

TRACKING_ENV = "MLFLOW_TRACKING_URI"
# The experiment tag that tells MLflow 3's UI an experiment is for model training, not GenAI:
# "custom_model_development" is the "Machine learning" kind of the UI's ExperimentKind (3.17.2's
# build). With it the UI does not guess the kind from the runs and traces; a kind a user picks in
# the UI is kept. 3.17's UI reads it to pick the view only with its GenAI / Model-training switch
# turned off (a build flag, on in 3.17): there the view follows the switch, which a browser
# remembers, or `?workflowType=machine_learning` in the link.
EXPERIMENT_KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}
_EXPS_TMP = (".dvc", "tmp", "exps")


def repo_root(start: Path | None = None) -> Path:
    """The DVC repository's root directory.

    ``dvc exp run --temp`` and queued experiments run in a copy under ``<repo>/.dvc/tmp/exps/``;
    from there the root is the original repository, so their MLflow records are not lost with
    the copy.
    """
    here = (start or Path.cwd()).resolve()
    root = next((p for p in (here, *here.parents) if (p / ".dvc").is_dir()), here)
    parts = root.parts
    for i in range(len(parts) - len(_EXPS_TMP) + 1):
        if parts[i: i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return root


def default_tracking_uri() -> str:
    """MLflow's default store, ``sqlite:///mlflow.db``, anchored at the repository root."""
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else :func:`default_tracking_uri`."""
    return os.environ.get(TRACKING_ENV) or default_tracking_uri()


def artifact_location(experiment: str) -> str | None:
    """Where a new experiment's artifacts go: the repository's ``mlartifacts/`` with the default store."""
    # With the default local store, pin artifacts to the repository root too (MLflow would use
    # ./mlruns of whatever directory created the experiment); a server decides for itself.
    # Compared by value: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI itself.
    if tracking_uri() != default_tracking_uri():
        return None
    return (repo_root() / "mlartifacts" / experiment).as_uri()


def redact(uri: str) -> str:
    """``uri`` without credentials or query string, fit to print (``http://***@host:5000/path``)."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.netloc and not parsed.query:
        return uri
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


def redact_all(value: Any) -> Any:
    """:func:`redact` applied to every string inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(item) for item in value)
    return value


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when an HTTP tracking server does not answer.

    MLflow's own client retries with backoff for minutes before giving up. The check goes the way
    MLflow's requests go (the ``requests`` library), so ``HTTP(S)_PROXY`` and ``NO_PROXY`` apply;
    any HTTP answer, even an error status, means the server is there.
    """
    if urllib.parse.urlparse(uri).scheme not in {"http", "https"}:
        return
    import requests

    try:
        requests.head(uri, timeout=timeout_s, allow_redirects=False).close()
    except requests.RequestException as exc:
        reason = exc.__class__.__name__ if isinstance(exc, requests.Timeout) else _root_cause(exc)
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({TRACKING_ENV}): {reason}. "
            f"Start the server, or unset {TRACKING_ENV} to use the local store {default_tracking_uri()}"
        ) from None


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message, without the URL (it may hold credentials)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": ", 1)[-1] if "://" in text else text


def store_setup_lock(uri: str):
    """An inter-process lock around a sqlite store's first use.

    MLflow creates and migrates the sqlite schema on first use; stages started together
    (``dvc queue start -j N``) would otherwise race on it ("duplicate column name").
    """
    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(uri.removeprefix("sqlite:///"))
    return FileLock(str(database.with_name(database.name + ".lock")), timeout=300)


def git_commit() -> str | None:
    """HEAD's commit of the repository, or ``None`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(*, dataset: str, stage: str, variant: str | None = None) -> dict[str, str]:
    """The contract's tags: variant, dataset, stage, git commit, and dvc_exp under ``dvc exp run``."""
    tags = {"dataset": dataset, "stage": stage}
    if variant is not None:
        tags["variant"] = variant
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = exp
    return tags


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so the run is closed as KILLED like on Ctrl-C."""


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``) for ``log_params``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat
