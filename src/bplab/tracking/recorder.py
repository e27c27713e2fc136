"""The pipeline's one owner of MLflow: a :class:`Recorder` opens (or resumes) a stage's run, logs
into it, and ends it with a status, or logs into another stage's run and leaves its status alone
(evaluate into its training's). Stages and training call only it; the registry and ``compare``
read (and the registry registers) on their own.

``import mlflow`` costs seconds, so it happens inside the methods that need it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from bplab import plots
from bplab.errors import BplabError, TrackingUnavailable
from bplab.interrupts import interrupts_deferred
from bplab.params.metrics import SECONDS
from bplab.params.schema import record_stride
from bplab.tracking import store

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from mlflow.entities import Metric
    from mlflow.models.model import Model, ModelInfo

    from bplab.train.loop import EpochRecord

# MLflow's client sends at most 1000 entities (metrics, params and tags together) per request and
# splits a larger log_batch into several requests (MAX_ENTITIES_PER_BATCH in MLflow 3.17's
# TrackingServiceClient.log_batch): 1000 metrics and a tag went as 999 metrics with the tag, then
# the last metric alone. An epoch's batch leaves room for its logged-through tag, so the tag and
# the epoch's SECONDS (its last metric) always travel in one request.
ENTITIES_PER_REQUEST = 1000
METRICS_PER_BATCH = ENTITIES_PER_REQUEST - 1
# Tags the recorder keeps on its runs: which process holds the run (to find runs a kill -9 left
# RUNNING), and the last epoch whose metrics are stored (to log each epoch once across a resume).
HOST_TAG, PID_TAG, LOGGED_THROUGH_TAG = "bplab.host", "bplab.pid", "bplab.logged_through_epoch"
# A one-off token each new run carries from its creation: MLflow's HTTP client retries a create_run
# whose answer was lost, and the server has made a run for each try; those carry the same token.
CREATION_TAG = "bplab.creation"
# The pyfunc flavor's device. mlflow.pytorch writes ``config: {device: null}``, and its pyfunc
# loader then picks CUDA whenever a GPU is present; but a torch.export (pt2) program keeps the
# device it was exported on, so on a GPU machine ``mlflow.pyfunc.load_model`` and ``mlflow models
# serve`` refused the CPU-exported model (MLflow 3.17, measured on an H100). The networks are
# small and always exported on the CPU, so they are served there, on any machine.
SERVING_DEVICE = "cpu"
REPRODUCE_FOLDER = "reproduce"  # a training run's artifacts for `bplab reproduce` and `bplab diff`
CODE_FILE, ENVIRONMENT_FILE = "code.json", "environment.json"
ENVIRONMENT_PACKAGES = ("mlflow", "numpy", "dvc")


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, creating it if needed (safe when processes race to create it).

    The experiment carries :data:`store.EXPERIMENT_KIND_TAG`, which marks it for model training in
    MLflow's UI; one made before that tag existed gets it here (the lookup returns the tags: no
    extra call once it has it). A kind already set, by a user in the UI say, is kept.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = store.tracking_uri()
    client = store.ready_client(uri)
    store.hide_run_links(uri)  # every run is made or resumed through here
    mlflow.set_tracking_uri(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=store.artifact_location(name),
                                            tags=store.EXPERIMENT_KIND_TAG)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    for key, value in store.EXPERIMENT_KIND_TAG.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def run_of_dvc_exp(experiment: str, exp_name: str, run_name: str | None = None) -> Any | None:
    """The latest run of ``experiment`` made by the DVC experiment ``exp_name`` (the stages tag
    their runs ``dvc_exp``; ``run_name``: only that variant's), or ``None``."""

    client = store.client(store.tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.dvc_exp = '{exp_name}'" + (f" and attributes.run_name = '{run_name}'" if run_name else "")
    runs = client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _reason(failure: BaseException) -> str:
    """A store error in a few words: MLflow's HTTP errors repeat the whole request (redacted before
    it is cut short, so no URL is cut before its credentials end)."""
    text = store.redact(str(getattr(failure, "message", failure)))
    return "connection refused" if "Connection refused" in text else text[:300]


_DATASET_ATTEMPTS = 3


def _lost_dataset_race(failure: Any) -> bool:
    """Whether a ``log_input`` was refused because another run added the same dataset meanwhile.

    MLflow's store looks for the dataset in the experiment and adds it if missing, in one
    transaction. Two runs logging the same new dataset at once (trainings on one dataset, started
    together) both add it; on PostgreSQL or MySQL the second is refused with HTTP 400, a
    unique-key violation, and its run gets no input (sqlite takes one writer at a time). Asked
    again, the store finds the dataset and links it.
    """
    text = str(getattr(failure, "message", failure)).lower()
    return "dataset" in text and ("unique" in text or "duplicate" in text)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise store.Terminated(f"received signal {signum}")


def _end_orphans(experiment_id: str, run_name: str) -> None:
    """Mark KILLED the runs named ``run_name`` that a killed process of this host left RUNNING."""

    client = store.client()
    host = socket.gethostname()
    for run in client.search_runs([experiment_id], f"attributes.run_name = '{run_name}' and "
                                  f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"):
        if store.process_alive(run.data.tags.get(PID_TAG)) is False:  # an unreadable pid: leave the run be
            client.set_terminated(run.info.run_id, "KILLED")


def _delete_retried_creations(experiment_id: str, token: str, kept: str) -> None:
    """Delete the runs carrying creation ``token`` other than ``kept``: a create_run whose answer
    was lost is retried by MLflow's HTTP client (every method, a POST too), and the server made a
    run for the lost try as well, which would stay RUNNING forever. Only HTTP stores retry."""

    if urllib.parse.urlsplit(store.tracking_uri()).scheme not in {"http", "https"}:
        return
    client = store.client()
    for run in client.search_runs([experiment_id], f"tags.`{CREATION_TAG}` = '{token}'"):
        if run.info.run_id != kept:
            client.delete_run(run.info.run_id)


class RunGone(BplabError):
    """The MLflow run to resume or log into was deleted, or is not in this tracking store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"MLflow run {run_id} is not in the tracking store {store.redact(store.tracking_uri())}: it was deleted, "
            f"or logged to another store (models pulled from a DVC remote, or {store.TRACKING_ENV} changed since "
            f"training); set {store.TRACKING_ENV} to the store that holds it, or train again "
            "(`dvc repro --force train@<variant>`)")


def _live_run(run_id: str) -> Any | None:
    """Run ``run_id`` of the tracking store, or ``None`` if it is not there or deleted."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        run = store.ready_client().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def training_environment(device: str | None) -> dict[str, str]:
    """What a run's numbers may depend on besides params, code and data: Python, the versions of
    torch and :data:`ENVIRONMENT_PACKAGES`, torch's build (the CUDA it was built for, or CPU only),
    the platform and the device (with the GPU's name and CUDA's version on a GPU)."""
    import platform

    import torch

    found = {"python": platform.python_version()}
    for package in ("torch", *ENVIRONMENT_PACKAGES):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    found |= {"torch_build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
              "platform": platform.platform(terse=True), "machine": platform.machine()}
    if device is not None:
        found["device"] = device
        if device.startswith("cuda"):
            found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` is a live (not deleted) run of the tracking store."""
    return _live_run(run_id) is not None


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`store.Terminated` (a KeyboardInterrupt) inside the block, so a stage
    ends as it does on Ctrl-C: its outputs unwritten, its run (if it opened one) KILLED."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _whole(method: Callable[..., Any]) -> Callable[..., Any]:
    """A method that calls a store MLflow opens in this process, made whole: an interrupt arriving
    inside it takes effect as it returns (:func:`bplab.interrupts.interrupts_deferred`), not inside
    SQLAlchemy. A server's store is left to be interrupted at once: a request cut short leaves the
    server whole, and Ctrl-C must not wait behind a dead server's retries."""
    @functools.wraps(method)
    def whole(*args: Any, **kwargs: Any) -> Any:
        with interrupts_deferred() if store.opened_in_process(store.tracking_uri()) else nullcontext():
            return method(*args, **kwargs)

    return whole


class Recorder:
    """One MLflow run of a stage, and everything logged into it."""

    def __init__(self, run_id: str, experiment_id: str, opened: bool = True, creation: str | None = None) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.opened = opened  # False: a run of another stage, logged into but never ended here
        self.creation = creation  # the token a new run was created with (CREATION_TAG)
        self.ended = False

    @classmethod
    @contextmanager
    def run(cls, experiment: str, run_name: str, tags: Mapping[str, str], run_id: str | None = None,
            system_metrics_s: float | None = None) -> Iterator[Recorder]:
        """A run that always ends: FINISHED, FAILED on an exception, KILLED on SIGINT/SIGTERM.

        With ``run_id``, that existing run is resumed (a training resumed from its checkpoint). With
        ``system_metrics_s``, MLflow samples the machine's CPU, memory, disk, network (and GPU)
        that often while the run is open, as ``system/...`` metrics; a resumed run's samples go on
        from its last step. A new run is made once, even where MLflow's client retried its
        creation (:func:`_delete_retried_creations`).
        """
        import mlflow

        if system_metrics_s is not None:
            mlflow.set_system_metrics_sampling_interval(system_metrics_s)
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not 3 INFO lines per stage
        system = system_metrics_s is not None  # explicit: MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is not consulted

        experiment_id = ensure_experiment(experiment)
        holder = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        creation = None
        if run_id is None:
            _end_orphans(experiment_id, run_name)
            creation = uuid.uuid4().hex
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, log_system_metrics=system,
                                   tags=store.redact_all(dict(tags)) | holder | {CREATION_TAG: creation})
            _delete_retried_creations(experiment_id, creation, run.info.run_id)
        else:
            if not run_exists(run_id):
                raise RunGone(run_id)
            run = mlflow.start_run(run_id=run_id, log_system_metrics=system)
            mlflow.set_tags(store.redact_all(dict(tags)) | holder)
        recorder = cls(run.info.run_id, run.info.experiment_id, creation=creation)
        with _sigterm_interrupts():
            try:
                yield recorder
            except KeyboardInterrupt:
                recorder._end("KILLED")
                raise
            except BaseException:
                recorder._end("FAILED")
                raise
            else:
                recorder.end()

    @classmethod
    @contextmanager
    def into(cls, run_id: str, tags: Mapping[str, str]) -> Iterator[Recorder]:
        """Log into run ``run_id`` of another stage (evaluate into its train run) without resuming it.

        The run is neither restarted nor ended, here or by :meth:`end`: whatever happens inside,
        an error or a signal included, its status stays what its own stage left (a failed or
        interrupted evaluate leaves its training FINISHED, and ``bplab compare`` still lists it).
        Params, metrics, tags, dicts, figures and directories go by run id; a training's own logging
        (:meth:`log_model`, :meth:`log_state_dict`, :meth:`log_training_data`,
        :meth:`log_reproduction`) needs a run opened by :meth:`run`. SIGTERM ends the block as
        :meth:`run` does.
        """
        import mlflow

        uri = store.tracking_uri()
        run = _live_run(run_id)  # checks the server and sets up a sqlite store, as ensure_experiment does
        if run is None:
            raise RunGone(run_id)
        mlflow.set_tracking_uri(uri)
        recorder = cls(run_id, run.info.experiment_id, opened=False)
        recorder.set_tags(tags)
        with _sigterm_interrupts():
            yield recorder

    @_whole
    def _end(self, status: str) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        if self.ended:
            return
        self.ended = True
        if not self.opened:  # a run of another stage: its status is that stage's
            return
        if status == "FINISHED":
            if self.creation is not None:  # a slow first try may have made its run after the start
                _delete_retried_creations(self.experiment_id, self.creation, self.run_id)
            mlflow.end_run(status)
            return
        # The stage is failing already, perhaps because the store is gone: one attempt, no retries
        # (a Ctrl-C must not wait behind them), and its error is reported, not raised.
        retries = os.environ.get(store.RETRIES_ENV)
        os.environ[store.RETRIES_ENV] = "0"
        try:
            mlflow.end_run(status)
        except MlflowException as exc:
            print(f"could not mark MLflow run {self.run_id} {status} ({_reason(exc)})", file=sys.stderr)
        finally:
            os.environ[store.RETRIES_ENV] = retries or store.CLIENT_SETTINGS[store.RETRIES_ENV]

    def end(self) -> None:
        """End the run as FINISHED now (the context does it at its end otherwise); nothing for a
        run of another stage (:meth:`into`)."""
        self._end("FINISHED")

    @_whole
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested mappings become dotted names (``model.arch``). URLs lose their
        credentials and query strings (presigned links carry secrets there)."""
        import mlflow

        mlflow.log_params(store.flatten(store.redact_all(dict(params))), run_id=self.run_id)

    @_whole
    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log final (step-less) values; a metric whose latest value is already this one is not
        logged again (a stage re-run after a kill leaves one value, not two)."""
        import mlflow

        latest = store.client().get_run(self.run_id).data.metrics
        changed = {key: value for key, value in metrics.items() if latest.get(key) != value}
        if changed:
            mlflow.log_metrics(changed, run_id=self.run_id)

    @_whole
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run (URLs redacted)."""
        from mlflow.entities import RunTag

        store.client().log_batch(self.run_id, tags=[RunTag(key, str(value))
                                                    for key, value in store.redact_all(dict(tags)).items()])

    @_whole
    def log_dict(self, values: Mapping[str, Any], file_name: str) -> None:
        """Log ``values`` as a JSON or YAML artifact named ``file_name`` (URLs redacted)."""
        import mlflow

        mlflow.log_dict(store.redact_all(dict(values)), file_name, run_id=self.run_id)

    @_whole
    def log_text(self, text: str, file_name: str) -> None:
        """Log ``text`` as the artifact ``file_name`` (URLs redacted)."""
        import mlflow

        mlflow.log_text(store.redact(text), file_name, run_id=self.run_id)

    @_whole
    def log_reproduction(self, params: Mapping[str, Any], resolved: Mapping[str, Any], lock: str | None,
                         changes: list[str] | None, code: Mapping[str, str] | None = None,
                         device: str | None = None) -> None:
        """What it takes to rerun this run and to say how it differs from another, under
        ``reproduce/``: the ``params.yaml`` it ran with, its resolved variant params (JSON),
        ``dvc.lock`` as it stood, the uncommitted changes (``git status --porcelain``) when the tree
        was dirty, ``code.json`` (the sha256 of each code file of the stage) and
        ``environment.json`` (:func:`training_environment`). URLs lose their credentials and query
        strings in each: ``dvc.lock`` holds the same param values as ``params.yaml`` (its text is
        redacted as it is, so the file keeps its layout)."""
        import mlflow

        mlflow.log_dict(store.redact_all(dict(params)), f"{REPRODUCE_FOLDER}/params.yaml")
        mlflow.log_dict(store.redact_all(dict(resolved)), f"{REPRODUCE_FOLDER}/variant.json")
        if lock is not None:
            mlflow.log_text(store.redact(lock), f"{REPRODUCE_FOLDER}/dvc.lock")
        if changes:
            mlflow.log_text(store.redact("\n".join(changes) + "\n"), f"{REPRODUCE_FOLDER}/git_status.txt")
        if code is not None:
            mlflow.log_dict(dict(code), f"{REPRODUCE_FOLDER}/{CODE_FILE}")
        mlflow.log_dict(training_environment(device), f"{REPRODUCE_FOLDER}/{ENVIRONMENT_FILE}")

    @_whole
    def log_directory(self, directory: Path, folder: str) -> None:
        """Log every file under ``directory`` as artifacts under ``folder``."""
        import mlflow

        mlflow.log_artifacts(str(directory), folder, run_id=self.run_id)

    def log_figures(self, figures: Mapping[str, Figure], folder: str = "plots") -> None:
        """Log pictures as PNG artifacts under ``folder``, one per file name."""
        with tempfile.TemporaryDirectory() as staging:
            for file_name, figure in figures.items():
                plots.save(figure, Path(staging, file_name))
            self.log_directory(Path(staging), folder)

    @_whole
    def log_training_data(self, x: np.ndarray, y: np.ndarray, source: Path, name: str, digest: str) -> None:
        """The training split as the run's input dataset (name, digest, schema, source path)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        with warnings.catch_warnings():
            # MLflow registers its local-file source for two URI schemes and warns it is ambiguous.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(x, targets=y, source=str(source.resolve()), name=name, digest=digest)
        for attempt in range(1, _DATASET_ATTEMPTS + 1):
            try:
                mlflow.log_input(dataset, context="training")
                return
            except MlflowException as exc:
                if attempt == _DATASET_ATTEMPTS or not _lost_dataset_race(exc):
                    raise

    @_whole
    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> ModelInfo:
        """Log ``model`` (on the CPU) as the run's MLflow model ``model``.

        The format is ``pt2`` (torch.export), which loads without unpickling code; the signature
        and the example of several rows leave the batch dimension free. ``mlflow.pytorch.load_model``
        returns an ``nn.Module``; ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` predict
        on the CPU whether or not the machine has a GPU. Pip requirements are given, not inferred
        (inference costs seconds).
        """
        import torch
        from mlflow.models import infer_signature
        from mlflow.models.model import Model

        model.eval()
        with torch.no_grad():
            output = model(example)
        requirements = {"torch": version("torch"), "mlflow": version("mlflow")}
        with _requirements_checked_against(requirements):
            return Model.log(
                artifact_path=None,
                name="model",
                flavor=_PYTORCH_SERVED_ON_CPU,
                pytorch_model=model,
                signature=infer_signature(example.numpy(), output.numpy()),
                input_example=example.numpy(),
                serialization_format="pt2",
                pip_requirements=[f"{name}=={v}" for name, v in requirements.items()],
            )

    @_whole
    def log_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Log the weights as the run's ``state_dict`` artifact."""
        import mlflow.pytorch

        mlflow.pytorch.log_state_dict(state_dict, artifact_path="state_dict")

    @_whole
    def epoch_logger(self, epochs: int, max_points: int | None, record_steps: bool) -> EpochLogger:
        """An :class:`EpochLogger` for this run (see there), which skips the epochs the run has
        stored already (a resumed run re-trains from its last checkpoint)."""

        client = store.client()
        run = client.get_run(self.run_id)
        stored = int(run.data.tags.get(LOGGED_THROUGH_TAG, "0"))
        if SECONDS in run.data.metrics:
            # A store commits a batch's metrics before its tags: a server that died in between (or
            # whose answer was lost) holds epochs the tag does not count yet. Each one's SECONDS,
            # written last, says it is whole.
            stored = max(stored, *(m.step for m in client.get_metric_history(self.run_id, SECONDS)))
        return EpochLogger(self.run_id, epochs, max_points, record_steps, stored)


class EpochLogger:
    """Sends epoch records to the run in batches, in order, on a worker thread.

    Each record's metrics and its wall time go at step = epoch: the records are the epochs the
    training records (:meth:`bplab.train.loop.EpochPlan.recorded`: with ``max_points`` set, every
    k-th, the first and the last, so a metric gets at most about ``max_points`` points). With
    ``record_steps`` the training loss of the steps of those epochs goes as ``train_loss_step``
    too, every k-th step of the training (and its last) for at most about ``max_points``.

    An epoch's values go in one ``log_batch`` call, with the tag that says which epoch the run
    has stored through, so a kill cannot store half an epoch or lose the count; epochs up to
    ``stored_through`` are skipped, so a resumed run logs each epoch once. ``after_stored`` runs
    work (the checkpoint) on the same thread once everything before it is stored. A failed write
    is raised at the next call, naming the tracking store.
    """

    def __init__(self, run_id: str, epochs: int, max_points: int | None, record_steps: bool,
                 stored_through: int = 0) -> None:

        self.client = store.client()
        # One worker calling the synchronous log_batch. MLflow's own asynchronous mode would do
        # too, but ending a run joins its queue thread, which polls with a one-second timeout:
        # about 2 s added to every training stage.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bplab-metrics")
        self._operations: list[Future] = []
        self.run_id = run_id
        self.epochs = epochs
        self.max_points = max_points
        self.record_steps = record_steps
        self.stored_through = stored_through
        self._failure: BaseException | None = None  # the first write that failed: later work is skipped
        self.write_seconds: list[float] = []  # each log_batch call's wall time, retries included

    def _epoch_metrics(self, r: EpochRecord, now: int) -> list[Metric]:
        """The epoch's points, its :data:`SECONDS` last: stored last, it marks the epoch complete."""
        from mlflow.entities import Metric

        metrics = []
        if self.record_steps:
            steps = r.step_numbers()
            stride = record_stride(self.epochs * len(steps), self.max_points)
            last = steps[-1] if r.final else None
            metrics += [Metric("train_loss_step", v, now, step) for step, v in zip(steps, r.step_losses)
                        if step == 1 or step % stride == 0 or step == last]
        logged = r.logged()
        seconds = logged.pop(SECONDS)
        metrics += [Metric(k, v, now, r.epoch) for k, v in logged.items()]
        return [*metrics, Metric(SECONDS, seconds, now, r.epoch)]

    def __call__(self, records: list[EpochRecord]) -> None:
        self._raise_failure()
        now = int(time.time() * 1000)
        batch: list[Metric] = []
        through = None
        for r in records:
            metrics = self._epoch_metrics(r, now) if r.epoch > self.stored_through else []
            if batch and len(batch) + len(metrics) > METRICS_PER_BATCH:
                self._submit(batch, through)
                batch = []
            while len(metrics) > METRICS_PER_BATCH:  # one epoch alone over the limit: stored in parts
                self._submit(metrics[:METRICS_PER_BATCH], r.epoch - 1)
                metrics = metrics[METRICS_PER_BATCH:]
            batch += metrics
            through = r.epoch
        if through is not None and through > self.stored_through:
            self._submit(batch, through)

    def _submit(self, batch: list[Metric], through: int) -> None:
        from mlflow.entities import RunTag

        tag = [RunTag(LOGGED_THROUGH_TAG, str(max(through, self.stored_through)))]
        self._operations.append(self._writer.submit(self._unless_failed, self._store, batch, tag))

    def _store(self, batch: list[Metric], tags: list[Any]) -> None:
        started = time.perf_counter()
        self.client.log_batch(self.run_id, metrics=batch, tags=tags)
        self.write_seconds.append(time.perf_counter() - started)

    def after_stored(self, work) -> None:
        """Run ``work()`` on the writer thread after every batch submitted so far is stored (not at
        all once a batch has failed: a checkpoint must not claim epochs the run does not hold)."""
        self._operations.append(self._writer.submit(self._unless_failed, work))

    def _unless_failed(self, work, *args, **kwargs) -> None:
        if self._failure is None:  # one dead server costs one round of retries, not one per batch
            try:
                work(*args, **kwargs)
            except BaseException as exc:
                self._failure = exc
                raise

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise TrackingUnavailable(
                f"writing to the MLflow tracking store {store.redact(store.tracking_uri())} failed "
                f"({_reason(self._failure)}); "
                "the run resumes from its last checkpoint on the next `dvc repro`")
        self._operations = [op for op in self._operations if not op.done()]

    def wait(self) -> None:
        """Block until every batch has been written (raises if one failed)."""
        try:
            for operation in self._operations:
                operation.exception()  # waits
            self._raise_failure()
        finally:
            self._operations.clear()
            self._writer.shutdown(wait=True)

    def close(self) -> None:
        """Stop without raising: for a run ending on an error or a signal, where the error in
        flight is the one to report. Queued batches are dropped (the checkpoint they precede is
        not written either), so a dead server cannot hold the process."""
        self._writer.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _requirements_checked_against(requirements: Mapping[str, str]) -> Iterator[None]:
    """While logging a model whose pip requirements are exactly ``requirements``, this
    environment's own packages: MLflow checks them against the environment through its map of
    every installed distribution's modules, which ``importlib_metadata.packages_distributions()``
    builds by reading every package's file list (0.4 to 0.9 s of a training stage, for packages
    taken from this very environment). The map is given just these packages, then dropped, so
    anything else that needs MLflow's full map in this process builds it as usual.
    """
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", ...) is not None:  # built already, or renamed
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {name: [name] for name in requirements}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = requirements_utils._PACKAGES_TO_MODULES = None


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
