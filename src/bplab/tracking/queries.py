"""What the command line reads back from MLflow: runs, registry aliases and recorded files.

``bplab compare``, ``bplab serve``, ``bplab promote`` and ``bplab reproduce`` read the store through
these functions; MLflow's own errors stay in here, turned into ``None`` or a
:class:`~bplab.tracking.registry.RegistryError` that names what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bplab.errors import BplabError
from bplab.tracking import store
from bplab.tracking.registry import CHAMPION, RegistryError


def check_store(tracking_uri: str) -> None:
    """Refuse a sqlite store that does not exist yet: MLflow would create an empty one on first
    use, and a lookup must not leave one behind."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise RegistryError(f"no MLflow store at {store.redact(tracking_uri)}: run `dvc repro` here "
                            f"first, or set {store.TRACKING_ENV}")


def aliased_version(name: str, tracking_uri: str, alias: str = CHAMPION) -> Any:
    """The version of registered model ``name`` that holds ``alias`` in the store ``tracking_uri``.

    Raises :class:`~bplab.tracking.registry.RegistryError` naming the model and the alias when the
    store, the model or the alias does not exist: what ``bplab serve`` reports instead of a traceback.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    shown = store.redact(tracking_uri)
    check_store(tracking_uri)
    client = store.client(tracking_uri)
    try:
        version = client.get_registered_model(name).aliases.get(alias)
        if version is None:
            raise RegistryError(f"registered model {name!r} in {shown} has no version with the alias {alias!r}")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise RegistryError(f"no registered model {name!r} in {shown}, so no {alias!r}: "
                                f"train and evaluate a {name} variant first (`dvc repro`)") from None
        raise RegistryError(f"registered model {name!r} in {shown}: {exc.message}") from None


def champion_run(client: Any, dataset: str) -> str | None:
    """The id of the run whose model holds ``champion`` of ``dataset``, or ``None`` if none does."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(dataset, CHAMPION)
    except MlflowException:
        return None
    return version.tags.get("run_id") or version.run_id


def run_or_none(client: Any, run_id: str) -> Any:
    """Run ``run_id`` whatever its status, or ``None`` if the store does not have it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


class NotATrainingRun(BplabError):
    """A run a user named is not in the store, or is not a training run."""


def training_run(client: Any, run_id: str) -> Any:
    """Training run ``run_id`` (tagged ``stage=train`` with its ``variant``), whatever its status; a
    :class:`NotATrainingRun` naming the store, or the run's stage, otherwise."""
    run = run_or_none(client, run_id)
    if run is None:
        raise NotATrainingRun(f"no run {run_id!r} in {store.redact(client.tracking_uri)}")
    tags = run.data.tags
    if tags.get("stage") != "train" or "variant" not in tags:
        raise NotATrainingRun(f"run {run_id} is not a training run (its stage tag is {tags.get('stage')!r})")
    return run


def experiment_names(client: Any) -> list[str]:
    """The names of the store's experiments."""
    return [experiment.name for experiment in client.search_experiments()]


def finished_runs(client: Any, experiment: str) -> list[Any] | None:
    """The FINISHED runs of ``experiment``, newest first; ``None`` when there is no such experiment."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    return list(client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"]))


def artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """The text of artifact ``path`` of run ``run_id``, or ``None`` when the run has none there."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.exceptions import MlflowException

    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)  # one small file: a progress bar per read is noise
    try:
        return Path(client.download_artifacts(run_id, path)).read_text()
    except (MlflowException, OSError):
        return None


def artifact_folder(client: Any, run_id: str, folder: str) -> dict[str, bytes]:
    """The bytes of each file directly in run ``run_id``'s artifact folder ``folder``, by name, in
    one download; ``{}`` when the run has no such folder."""
    import tempfile

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.exceptions import MlflowException

    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)
    with tempfile.TemporaryDirectory(prefix="bplab-artifacts-") as scratch:
        try:
            found = Path(client.download_artifacts(run_id, folder, scratch))
        except (MlflowException, OSError):
            return {}
        return {path.name: path.read_bytes() for path in found.iterdir() if path.is_file()}


def model_version_or_none(client: Any, name: str, alias: str | None = None, version: str | None = None) -> Any:
    """Version ``version`` of registered model ``name``, or the one holding ``alias``; ``None``
    when the model, the version or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        return None
