"""What a training run is made of, read back from MLflow: the one record ``bplab diff``, the model
cards and ``bplab lineage`` explain.

A training run records, besides its params and metrics: under ``reproduce/`` the ``params.yaml``
it ran with, ``dvc.lock`` as it stood (with the DVC hashes of the raw and processed data the
download and preprocess stages had just written), ``code.json`` (the sha256 of each code file of
the train stage) and ``environment.json`` (Python, package versions, device); as tags its git
commit, whether the tree was dirty (``git_status.txt`` then lists the changes) and the DVC
experiment that ran it; as its dataset input the digest of the training split, and, once
evaluated, the digests of the validation and test splits. :func:`load` gathers all of it into a
:class:`TrainingRecord`; :func:`resolve` finds the run a user names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from bplab.errors import BplabError
from bplab.tracking import queries, store
from bplab.tracking.recorder import CODE_FILE, ENVIRONMENT_FILE, REPRODUCE_FOLDER

# libyaml's parser with PyYAML's safe constructor (no tags that build objects): a pipeline's
# dvc.lock in 0.1 s, where PyYAML's own parser takes 0.8 s; the latter where PyYAML lacks libyaml.
CSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RUN_ID = re.compile(r"[0-9a-f]{32}")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")
# The data a run's numbers depend on, in the order a report lists them.
RAW, PROCESSED = "raw data", "processed data"
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = "train split", "validation split", "test split"
RESOLVED_FILE = "variant.json"  # the run's resolved params (Recorder.log_reproduction)


class LineageError(BplabError):
    """A run a user named does not exist, is not a training run, or has no record to read."""


@dataclass(frozen=True)
class TrainingRecord:
    """One training run, with everything that shaped its numbers.

    ``code`` maps each code file of the train stage to its sha256 (empty for a run made before
    runs recorded it); ``data`` maps :data:`RAW`, :data:`PROCESSED` (DVC's hashes) and the three
    splits (content digests) to their hash, where the run recorded it. ``resolved`` is
    ``reproduce/variant.json``: the params that shaped the run, by section (``variant``, ``seed``,
    ``device``, ``tracking``, ``train``: the variant's, ``data``: its dataset's), empty when not recorded.
    """

    run_id: str
    variant: str
    dataset: str
    status: str
    start_time: int | None
    params: dict[str, str]
    code: dict[str, str]
    data: dict[str, str]
    data_paths: dict[str, str]
    environment: dict[str, str]
    metrics: dict[str, float]
    git_commit: str | None
    git_dirty: bool | None
    git_changes: list[str] = field(default_factory=list)
    dvc_exp: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        """The first 8 characters of the run id, as the MLflow UI shows it."""
        return self.run_id[:8]


def _client(tracking_uri: str | None) -> Any:
    uri = tracking_uri or store.tracking_uri()
    queries.check_store(uri)
    return store.client(uri)


def _run_of_model(client: Any, name: str, alias: str | None, version: str | None) -> str:
    found = queries.model_version_or_none(client, name, alias, version)
    if found is None:
        wanted = f"@{alias}" if alias else f" version {version}"
        raise LineageError(f"no registered model {name}{wanted} in {store.redact(client.tracking_uri)}")
    return found.tags.get("run_id") or found.run_id


def _run_of_dvc_exp(client: Any, name: str) -> str | None:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.dvc_exp = '{name}' and tags.stage = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def resolve(reference: str, tracking_uri: str | None = None) -> str:
    """The id of the training run ``reference`` names: a run id, ``models:/<dataset>@<alias>``,
    ``models:/<dataset>/<version>`` or a DVC experiment's name (its latest training run). A
    :class:`LineageError` names a reference that matches none."""
    client = _client(tracking_uri)
    if (model := MODEL_URI.fullmatch(reference)) is not None:
        return _run_of_model(client, model["name"], model["alias"], model["version"])
    if RUN_ID.fullmatch(reference) and queries.run_or_none(client, reference) is not None:
        return reference
    if "'" not in reference and (run_id := _run_of_dvc_exp(client, reference)) is not None:
        return run_id
    raise LineageError(f"{reference!r} is neither a run id, a models:/ URI nor a DVC experiment with a training "
                       f"run in {store.redact(client.tracking_uri)}")


def _reproduce_files(client: Any, run_id: str) -> dict[str, str]:
    """The text of each file of the run's ``reproduce/`` folder, by name, in one download: evaluate
    reads them for every model card, and a download per file costs a lookup of the run each."""
    return {name: data.decode() for name, data in queries.artifact_folder(client, run_id, REPRODUCE_FOLDER).items()}


def _json_mapping(files: dict[str, str], name: str) -> dict[str, Any]:
    text = files.get(name)
    try:
        values = json.loads(text) if text is not None else {}
    except json.JSONDecodeError:
        return {}
    return values if isinstance(values, dict) else {}


def _json_file(files: dict[str, str], name: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in _json_mapping(files, name).items()}


def _out_hash(lock: dict[str, Any], stage: str, path: str) -> str | None:
    for out in ((lock.get("stages") or {}).get(stage) or {}).get("outs") or []:
        if isinstance(out, dict) and out.get("path") == path:
            return out.get("md5") or out.get("hash")
    return None


def _data(files: dict[str, str], run: Any, dataset: str) -> tuple[dict[str, str], dict[str, str]]:
    """The run's data hashes by kind, and the path or source each one is of."""
    hashes: dict[str, str] = {}
    paths: dict[str, str] = {}
    try:
        lock = yaml.load(files.get("dvc.lock") or "", Loader=CSafeLoader) or {}  # noqa: S506 - a safe constructor
    except yaml.YAMLError:
        lock = {}
    for kind, stage, path in ((RAW, f"download@{dataset}", f"data/raw/{dataset}"),
                              (PROCESSED, f"preprocess@{dataset}", f"data/processed/{dataset}")):
        if isinstance(lock, dict) and (found := _out_hash(lock, stage, path)):
            hashes[kind], paths[kind] = found, path
    for entry in run.inputs.dataset_inputs if run.inputs else []:
        if entry.dataset.name == f"{dataset}-train":
            hashes[TRAIN_SPLIT], paths[TRAIN_SPLIT] = entry.dataset.digest, f"{PROCESSED} x_train, y_train"
    for kind, tag, split in ((VAL_SPLIT, "val_digest", "val"), (TEST_SPLIT, "test_digest", "test")):
        if tag in run.data.tags:
            hashes[kind], paths[kind] = run.data.tags[tag], f"{PROCESSED} x_{split}, y_{split}"
    return hashes, paths


def load(run_id: str, tracking_uri: str | None = None) -> TrainingRecord:
    """The :class:`TrainingRecord` of training run ``run_id``; a
    :class:`~bplab.tracking.queries.NotATrainingRun` when the store has no such run or it is not a
    training run."""
    client = _client(tracking_uri)
    run = queries.training_run(client, run_id)
    tags = run.data.tags
    dirty = tags.get("git_dirty")
    files = _reproduce_files(client, run_id)
    changes = files.get("git_status.txt", "").splitlines() if dirty == "true" else []
    data, data_paths = _data(files, run, tags["dataset"])
    return TrainingRecord(
        run_id=run_id, variant=tags["variant"], dataset=tags["dataset"], status=run.info.status,
        start_time=run.info.start_time, params=dict(run.data.params), code=_json_file(files, CODE_FILE),
        data=data, data_paths=data_paths, environment=_json_file(files, ENVIRONMENT_FILE),
        metrics=dict(run.data.metrics), git_commit=tags.get("git_commit"),
        git_dirty=None if dirty is None else dirty == "true", git_changes=changes, dvc_exp=tags.get("dvc_exp"),
        tags=dict(tags), resolved=_json_mapping(files, RESOLVED_FILE))


Curve = list[tuple[int, float]]


def history(run_id: str, metrics: tuple[str, ...], tracking_uri: str | None = None) -> dict[str, Curve]:
    """The per-epoch values of ``metrics`` of run ``run_id``: (step, value) pairs in step order,
    one list per metric the run logged."""
    client = _client(tracking_uri)
    curves = {}
    for name in metrics:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        if points:
            curves[name] = points
    return curves
