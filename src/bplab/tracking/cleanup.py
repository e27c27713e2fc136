"""What ``bplab gc`` reads from MLflow and removes there: runs, registry versions, logged models.

:func:`survey` reads a store's bplab experiments (each dataset's and its ``-data`` experiment) and
registered models (one per dataset) into plain records; :mod:`bplab.tracking.retention` decides;
:func:`remove` acts. Runs are removed for good the way ``mlflow gc`` removes them, by its own code
(``mlflow.cli._gc_tracking_resources``: each run's artifacts, then its rows), given the runs and
logged models chosen here and nothing else: called without ids, ``mlflow gc`` would also take
every deleted run, logged model and experiment of the store, bplab's champions among them.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bplab.tracking import queries, store

LOCK_ARTIFACT = "reproduce/dvc.lock"  # Recorder.log_reproduction: dvc.lock as it stood when the run trained


@dataclass(frozen=True)
class RunFacts:
    """One run of a bplab experiment, as the retention rules need it."""

    run_id: str
    experiment: str
    name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    deleted: bool  # lifecycle stage "deleted": deleted in the UI or by the API, not yet collected
    start_time: int | None  # milliseconds since the epoch
    git_commit: str | None


@dataclass(frozen=True)
class VersionFacts:
    """One version of a bplab registered model."""

    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str | None
    model_id: str | None  # the logged model it registers (models:/<model_id>)


@dataclass(frozen=True)
class LoggedModelFacts:
    """One logged model (MLflow 3 keeps a run's model apart from the run's artifacts)."""

    model_id: str
    run_id: str | None


@dataclass(frozen=True)
class Survey:
    """Everything of a store that ``bplab gc`` weighs."""

    runs: tuple[RunFacts, ...]
    versions: tuple[VersionFacts, ...]
    logged_models: tuple[LoggedModelFacts, ...]


def _pages(search: Any) -> Iterator[Any]:
    """Every item of an MLflow search that answers pages (``search(page_token) -> PagedList``)."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _experiments(client: Any, datasets: Iterable[str]) -> dict[str, str]:
    """The ids of the bplab experiments the store has (deleted ones too), by name."""
    found = {}
    for dataset in datasets:
        for name in (dataset, store.data_experiment(dataset)):
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                found[experiment.experiment_id] = name
    return found


def _runs(client: Any, experiments: dict[str, str]) -> list[RunFacts]:
    from mlflow.entities import ViewType

    def search(token: str | None) -> Any:
        return client.search_runs(list(experiments), run_view_type=ViewType.ALL, max_results=1000, page_token=token)

    return [RunFacts(run.info.run_id, experiments[run.info.experiment_id], run.info.run_name or "",
                     run.info.status, run.info.lifecycle_stage == "deleted", run.info.start_time,
                     run.data.tags.get("git_commit"))
            for run in _pages(search)] if experiments else []


def _versions(client: Any, names: Iterable[str]) -> list[VersionFacts]:
    from mlflow.exceptions import MlflowException

    found = []
    for name in names:
        try:
            aliases = client.get_registered_model(name).aliases  # {alias: version}
        except MlflowException:
            continue  # no registered model of that dataset yet
        for version in _pages(lambda token, name=name: client.search_model_versions(f"name = '{name}'",
                                                                                    page_token=token)):
            held = tuple(sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)))
            found.append(VersionFacts(name, int(version.version), held, version.run_id,
                                      getattr(version, "model_id", None)))
    return found


def _logged_models(client: Any, experiment_ids: list[str]) -> list[LoggedModelFacts]:
    if not experiment_ids:
        return []
    return [LoggedModelFacts(model.model_id, model.source_run_id)
            for model in _pages(lambda token: client.search_logged_models(experiment_ids, page_token=token))]


def survey(tracking_uri: str, datasets: Iterable[str]) -> Survey:
    """The runs, registry versions and logged models of ``datasets``' experiments and registered
    models in the store ``tracking_uri``."""
    datasets = list(datasets)
    queries.check_store(tracking_uri)
    client = store.client(tracking_uri)
    experiments = _experiments(client, datasets)
    return Survey(tuple(_runs(client, experiments)), tuple(_versions(client, datasets)),
                  tuple(_logged_models(client, list(experiments))))


def recorded_lock(tracking_uri: str, run_id: str) -> str | None:
    """The ``dvc.lock`` run ``run_id`` recorded when it trained (its data's DVC hashes), or ``None``."""
    return queries.artifact_text(store.client(tracking_uri), run_id, LOCK_ARTIFACT)


@dataclass(frozen=True)
class Removal:
    """What :func:`remove` is to remove: registry versions (name, number), runs, logged models."""

    versions: tuple[tuple[str, int], ...]
    runs: tuple[str, ...]
    logged_models: tuple[str, ...]


def remove(tracking_uri: str, removal: Removal, backend_store_uri: str | None) -> bool:
    """Delete ``removal``'s registry versions, delete its runs and logged models (those not deleted
    yet), then remove them for good with ``mlflow gc``'s code, which works on the database itself:
    ``tracking_uri`` when the store is one (sqlite, PostgreSQL...), else ``backend_store_uri``, the
    database of the server ``tracking_uri`` names. Whether they were removed for good: ``False``
    when the store is a server and no ``backend_store_uri`` is given (they stay deleted there)."""
    client = store.client(tracking_uri)
    for name, version in removal.versions:
        client.delete_model_version(name, str(version))
    for run_id in removal.runs:
        if client.get_run(run_id).info.lifecycle_stage != "deleted":
            client.delete_run(run_id)
    for model_id in removal.logged_models:
        client.delete_logged_model(model_id)
    database = tracking_uri if store.opened_in_process(tracking_uri) else backend_store_uri
    if database is None:
        return False
    _collect(tracking_uri, database, removal)
    return True


def _collect(tracking_uri: str, database: str, removal: Removal) -> None:
    """``mlflow gc --backend-store-uri <database> --tracking-uri <tracking_uri> --run-ids ...
    --logged-model-ids ...``, minus the deleted experiments (never touched here)."""
    import mlflow
    from mlflow.cli import _gc_tracking_resources
    from mlflow.tracking import _get_store

    exported = os.environ.get(store.TRACKING_ENV)  # set_tracking_uri exports the URI: put it back after
    mlflow.set_tracking_uri(tracking_uri)  # how the mlflow-artifacts:/ locations of a server resolve
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its line per run: bplab gc prints its own table
            _gc_tracking_resources(_get_store(database), run_ids=list(removal.runs), experiment_ids=None,
                                   logged_model_ids=list(removal.logged_models), older_than=None, time_delta=0,
                                   skip_experiments=True, skip_logged_models=False)
    finally:
        mlflow.set_tracking_uri(exported)
        if exported is None:
            os.environ.pop(store.TRACKING_ENV, None)
