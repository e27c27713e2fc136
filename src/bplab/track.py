"""MLflow conventions of the pipeline: where runs go, how they are named and tagged, how they end.

``import mlflow`` costs seconds, so it happens inside the functions that need it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from bplab.errors import TrackingUnavailable

if TYPE_CHECKING:
    import mlflow
    import torch
    from mlflow.models.model import Model, ModelInfo

TRACKING_ENV = "MLFLOW_TRACKING_URI"
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


def _artifact_location(experiment: str) -> str | None:
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


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when an HTTP tracking server does not accept connections.

    MLflow's own client retries with backoff for minutes before giving up.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in {"http", "https"}:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({TRACKING_ENV}): {exc.strerror or exc}. "
            f"Start the server, or unset {TRACKING_ENV} to use the local store {default_tracking_uri()}"
        ) from None


def _store_setup_lock(uri: str):
    """An inter-process lock around a sqlite store's first use.

    MLflow creates and migrates the sqlite schema on first use; stages started together
    (``dvc queue start -j N``) would otherwise race on it ("duplicate column name").
    """
    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(uri.removeprefix("sqlite:///"))
    return FileLock(str(database.with_name(database.name + ".lock")), timeout=300)


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, creating it if needed (safe when processes race to create it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with _store_setup_lock(uri):
        found = mlflow.get_experiment_by_name(name)  # the first use of a sqlite store creates its tables
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(name))
    except MlflowException:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def stage_run(experiment: str, run_name: str, tags: dict[str, str],
              run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED, FAILED on an exception, KILLED on SIGINT/SIGTERM.

    With ``run_id``, the existing run is resumed (evaluate logs into its train run).
    """
    import mlflow

    experiment_id = ensure_experiment(experiment)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    if run_id is None:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    else:
        run = mlflow.start_run(run_id=run_id)
        if tags:
            mlflow.set_tags(tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


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


# The pyfunc flavor's device. mlflow.pytorch writes ``config: {device: null}``, and its pyfunc
# loader then picks CUDA whenever a GPU is present; but a torch.export (pt2) program keeps the
# device it was exported on, so on a GPU machine ``mlflow.pyfunc.load_model`` and ``mlflow models
# serve`` refused the CPU-exported model (MLflow 3.17, measured on an H100). The networks are
# small and always exported on the CPU, so they are served there, on any machine.
SERVING_DEVICE = "cpu"


def _save_pytorch_served_on_cpu(path: str, mlflow_model: Model, **kwargs: Any) -> None:
    """``mlflow.pytorch.save_model``, then the pyfunc flavor's device set to :data:`SERVING_DEVICE`.

    It runs inside ``Model.log`` before the input example is validated through pyfunc, so that
    validation loads the model the way serving will.
    """
    import mlflow.pytorch
    from mlflow.models.model import MLMODEL_FILE_NAME, MODEL_CONFIG
    from mlflow.pyfunc import FLAVOR_NAME as PYFUNC

    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors[PYFUNC][MODEL_CONFIG] = {"device": SERVING_DEVICE}
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


# A flavor for Model.log is anything with a save_model(path, mlflow_model, **kwargs); the name is
# the one MLflow records for the logged model, which stays a plain mlflow.pytorch model.
_PYTORCH_SERVED_ON_CPU = SimpleNamespace(__name__="mlflow.pytorch", save_model=_save_pytorch_served_on_cpu)


def log_model(model: torch.nn.Module, example: torch.Tensor) -> ModelInfo:
    """Log ``model`` (on the CPU) as the run's MLflow model ``model``.

    The format is ``pt2`` (torch.export), which loads without unpickling code; the signature and
    the example of several rows leave the batch dimension free. ``mlflow.pytorch.load_model``
    returns an ``nn.Module``; ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` predict on
    the CPU whether or not the machine has a GPU. Pip requirements are given, not inferred
    (inference costs seconds).
    """
    import torch
    from mlflow.models import infer_signature
    from mlflow.models.model import Model

    model.eval()
    with torch.no_grad():
        output = model(example)
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=_PYTORCH_SERVED_ON_CPU,
        pytorch_model=model,
        signature=infer_signature(example.numpy(), output.numpy()),
        input_example=example.numpy(),
        serialization_format="pt2",
        pip_requirements=[f"torch=={version('torch')}", f"mlflow=={version('mlflow')}"],
    )
