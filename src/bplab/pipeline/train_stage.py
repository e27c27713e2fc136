"""The ``train@<variant>`` stage: prepare (data, model, optimizer, resume), fit (logged), publish.

Outputs, written only after training and logging succeeded (staged, then renamed into place):

- ``models/<variant>/model.pt``: the whole model, saved by ``torch.save`` as in the tutorials
  (load it with :func:`bplab.models.safe_load.load_whole_model`, which runs no code from the file);
- ``models/<variant>/state_dict.pt``: the weights (:func:`bplab.models.safe_load.load_state_dict`);
- ``models/<variant>/run.json``: the MLflow run id and the logged model's URI;
- ``history/<variant>.csv``: per-epoch metrics, a DVC plots file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bplab import plots
from bplab.data import catalog, processed
from bplab.errors import ParamsError
from bplab.outputs import publish_directory, write_bytes_atomic, write_text_atomic
from bplab.params.schema import Params, VariantParams, record_stride
from bplab.paths import (
    RUN_FILE,
    STATE_DICT_FILE,
    WHOLE_MODEL_FILE,
    checkpoint_file,
    history_file,
    model_dir,
    processed_dir,
)
from bplab.pipeline import process
from bplab.timings import StageClock
from bplab.tracking import store
from bplab.tracking.recorder import Recorder

if TYPE_CHECKING:
    import torch

    from bplab.train.checkpoint import Checkpoint, Resumption
    from bplab.train.distributed import Placement
    from bplab.train.loop import EpochPlan, EpochRecord, Task
    from bplab.train.schedules import LrScheduleAndStopping


@dataclass
class PreparedTraining:
    """Everything a training needs, prepared from params, data and an interrupted start's checkpoint."""

    name: str
    variant: VariantParams
    placement: Placement
    source: Path
    data: processed.Prepared
    task: Task
    train_xy: tuple[torch.Tensor, torch.Tensor]
    val_xy: tuple[torch.Tensor, torch.Tensor]  # per-epoch val_* metrics; the test split is evaluate's alone
    n_out: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    controls: LrScheduleAndStopping  # the learning-rate schedule and early stopping
    generator: torch.Generator
    schedule: EpochPlan
    initial_weights: dict[str, torch.Tensor]
    train_digest: str
    fingerprint: dict[str, str]
    checkpoint: Path
    resume: Checkpoint | None
    why: str

    @property
    def first_epoch(self) -> int:
        return self.resume.epoch + 1 if self.resume else 1


def logged_params(params: Params, name: str, n_parameters: int, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Every training knob, as :meth:`Recorder.log_params` flattens it (``lr``, ``model.hidden``,
    ``param_groups.hidden``, ...), and the sizes of the model and the data."""
    knobs = params.train[name].model_dump(mode="json")
    return knobs | {"seed": params.seed, "variant": name, "n_parameters": n_parameters,
                    "n_train": shapes["x_train"][0], "n_val": shapes["x_val"][0], "n_test": shapes["x_test"][0],
                    "n_features": shapes["x_train"][1]}


def _write_history(path: Path, history: list[EpochRecord]) -> None:
    from bplab.params.metrics import EPOCH_METRICS, SECONDS

    # Every epoch metric, empty where the task has none, so that all variants' files share columns;
    # then the learning rates.
    names = [*EPOCH_METRICS, *(k for k in history[0].metrics if k not in EPOCH_METRICS)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("epoch", *names, SECONDS))
    for r in history:
        writer.writerow([r.epoch, *(r.metrics.get(name, "") for name in names), round(r.seconds, 6)])
    write_text_atomic(path, text.getvalue())


def _weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters() if p.dim() >= 2}


def _resumption(path: Path, expected: dict[str, str], epochs: int, placement: Placement) -> Resumption:
    """Rank 0 alone reads the checkpoint and decides, on its fingerprint; every rank follows that
    decision: it resumes from the same bytes, or starts afresh. (Ranks on other nodes have other
    disks, where a checkpoint may be missing or stale, and each rank deciding on its own
    fingerprint could resume where rank 0 started afresh.)"""
    from bplab.train import distributed
    from bplab.train.checkpoint import Resumption, load

    decision, raw = distributed.together(placement, lambda: _decide(path, expected, epochs) if placement.is_main
                                         else (None, None))
    raw = distributed.from_main(raw, placement)
    if placement.is_main:
        return decision
    return Resumption(None if raw is None else load(raw, path), "as rank 0 decided", False)


def _decide(path: Path, expected: dict[str, str], epochs: int) -> tuple[Resumption, bytes | None]:
    """Rank 0's decision on the checkpoint at ``path``, and the bytes to resume from (None: afresh)."""
    from bplab.tracking import recorder
    from bplab.train.checkpoint import Resumption, decide, read, set_aside

    raw = read(path)
    decision = decide(raw, path, expected, epochs)
    if decision.checkpoint is not None and not recorder.run_exists(decision.checkpoint.run_id):
        decision = Resumption(None, f"checkpoint {path} belongs to MLflow run {decision.checkpoint.run_id}, "
                                    "which no longer exists", True)
    if decision.set_aside:
        decision = Resumption(None, f"{decision.why}; kept as {set_aside(path)}; starting afresh", False)
    return decision, raw if decision.checkpoint is not None else None


def _prepare(name: str, params: Params, variant: VariantParams, placement: Placement, root: Path) -> PreparedTraining:
    """Data on the device, the seeded model and optimizer, and the checkpoint to resume from, if any."""
    import torch

    from bplab.models.architectures import build_model, initialize
    from bplab.train.checkpoint import code_digests, fingerprint
    from bplab.train.loop import BatchSizeError, EpochPlan, Task, check_schedule
    from bplab.train.optim import build_optimizer, check_param_groups
    from bplab.train.schedules import build_controls, check_controls

    source = processed_dir(variant.dataset, root)
    data = processed.load(source)
    task = Task(catalog.dataset(variant.dataset).task)
    train_xy, val_xy = (tuple(torch.from_numpy(a).to(placement.device) for a in data.splits[split])
                        for split in ("train", "val"))
    # Classes from every split: a train_limit may leave the highest class out of the training rows.
    n_out = int(max(y.max() for _, y in data.splits.values())) + 1 if task.kind == "multiclass" else 1
    torch.manual_seed(params.seed)
    model = initialize(build_model(variant.model, train_xy[0].shape[1], n_out, f"train.{name}.model"),
                       variant.init)
    check_param_groups(model, variant, f"train.{name}")
    check_controls(variant, task.has_accuracy, f"train.{name}")
    schedule = EpochPlan(variant.epochs, variant.batch_size, variant.eval_batch_size, variant.shuffle,
                        record_stride(variant.epochs, params.tracking.max_epoch_points))
    try:
        check_schedule(model, len(train_xy[0]), schedule, placement.world)
    except BatchSizeError as exc:
        raise ParamsError(f"train.{name}.batch_size: {exc}") from None
    initial_weights = {k: torch.from_numpy(v) for k, v in _weights(model).items()}
    train_digest = processed.content_digest(*data.splits["train"])
    digest = fingerprint({
        "params": {"variant": variant.model_dump(mode="json"), "seed": params.seed},
        "data": {"train": train_digest, "val": processed.content_digest(*data.splits["val"])},
        "model": {key: list(value.shape) for key, value in model.state_dict().items()},
        "code": code_digests(root, name, variant.dataset),
    })
    model = model.to(placement.device)
    optimizer = build_optimizer(model, variant)
    controls = build_controls(optimizer, variant, len(train_xy[0]))
    generator = torch.Generator().manual_seed(params.seed)
    return PreparedTraining(name, variant, placement, source, data, task, train_xy, val_xy, n_out, model, optimizer,
                controls, generator, schedule, initial_weights, train_digest, digest, checkpoint_file(name, root),
                None, "")


def _resume(job: PreparedTraining) -> None:
    """The job's state from its checkpoint when rank 0 decides to resume it (every rank alike)."""
    resumption = _resumption(job.checkpoint, job.fingerprint, job.variant.epochs, job.placement)
    job.resume, job.why = resumption.checkpoint, resumption.why
    if job.resume is not None:
        job.model.load_state_dict(job.resume.model)
        job.optimizer.load_state_dict(job.resume.optimizer)
        job.controls.load_state_dict(job.resume.controls)
        job.generator.set_state(job.resume.generator)
        job.initial_weights = job.resume.initial_weights


def _fit(job: PreparedTraining, on_epochs) -> int:
    """Train the job's model; the last epoch trained."""
    from bplab.train import distributed
    from bplab.train.loop import fit

    return fit(distributed.wrap(job.model, job.placement), job.optimizer, job.task, job.train_xy, job.val_xy,
               job.schedule, job.generator, on_epochs, first_epoch=job.first_epoch, placement=job.placement,
               controls=job.controls)


def _reproduction(root: Path, params: Params, name: str) -> dict[str, Any]:
    """What ``bplab reproduce`` needs of this run: params.yaml, the resolved variant, dvc.lock, git changes."""
    from bplab.params.yaml12 import read_yaml

    variant = params.train[name]
    resolved = {"variant": name, "seed": params.seed, "device": params.device,
                "tracking": params.tracking.model_dump(mode="json"), "train": variant.model_dump(mode="json"),
                "data": getattr(params.data, variant.dataset).model_dump(mode="json")}
    lock, file = root / "dvc.lock", root / "params.yaml"
    # The file as the stage read it (YAML 1.2: DVC writes 1e-05, which YAML 1.1 reads as a string); a
    # caller that passed params without one gets them as validated.
    raw = read_yaml(file.read_text()) if file.exists() else params.model_dump(mode="json")
    return {"params": raw, "resolved": resolved, "lock": lock.read_text() if lock.exists() else None,
            "changes": store.git_changes()}


def _fit_recorded(job: PreparedTraining, params: Params, recorder: Recorder, clock: StageClock,
                  reproduction: dict[str, Any]) -> tuple[list[EpochRecord], dict[str, Any]]:
    """Train, sending each report's epochs to MLflow, a checkpoint and the progress bar; the history
    and how training stopped. A new run also records ``reproduction`` (:func:`_reproduction`)."""
    from bplab.train.checkpoint import Checkpoint

    history = list(job.resume.history) if job.resume else []

    def checkpoint(epoch: int) -> bytes:  # the state now, to be written once its epochs are stored
        return Checkpoint(job.fingerprint, recorder.run_id, epoch, job.model.state_dict(), job.optimizer.state_dict(),
                          job.generator.get_state(), job.initial_weights, history, job.controls.state_dict(),
                          job.variant.epochs).to_bytes()

    with clock.phase("mlflow"):
        if job.resume is None:
            n_parameters = sum(p.numel() for p in job.model.parameters())
            recorder.log_params(logged_params(params, job.name, n_parameters, job.data.shapes())
                                | {"device": str(job.placement.device), "world_size": job.placement.world})
            x, y = job.data.splits["train"]
            recorder.log_training_data(x, y, job.source, f"{job.variant.dataset}-train", job.train_digest)
            recorder.log_reproduction(**reproduction)
            write_bytes_atomic(job.checkpoint, checkpoint(0))  # a kill in the first epoch resumes this run
        else:
            recorder.set_tags({"resumed_after_epoch": str(job.resume.epoch)})
        logger = recorder.epoch_logger(job.variant.epochs, params.tracking.max_epoch_points,
                                       record_steps=job.task.kind == "regression")
    try:
        with process.progress_bar(total=job.variant.epochs, initial=job.first_epoch - 1, desc=f"train@{job.name}",
                              unit="epoch", mininterval=1.0) as bar:
            def on_epochs(records: list[EpochRecord]) -> None:
                with clock.phase("mlflow_metrics"):
                    logger(records)
                history.extend(records)
                with clock.phase("checkpoints"):
                    payload = checkpoint(records[-1].epoch)
                    logger.after_stored(lambda: write_bytes_atomic(job.checkpoint, payload))
                bar.set_postfix({k: f"{v:.4g}" for k, v in records[-1].metrics.items()}, refresh=False)
                bar.update(records[-1].epoch - bar.n)

            process.started()
            clock.first_step = time.time()
            with clock.phase("training"):
                last_epoch = _fit(job, on_epochs)
        with clock.phase("mlflow_metrics"):
            logger.wait()
        clock.samples["log_batch_s"] = logger.write_seconds
        clock.last_step = time.time()  # the wind-down starts once every epoch is stored, not before
    finally:
        logger.close()  # on an error, the epochs logged so far are kept
    stop = job.controls.stop_record(last_epoch, job.variant.epochs)
    if job.controls.stopped:
        print(f"train@{job.name}: stopped after epoch {stop['stopped_epoch']}: {stop['stop_reason']}",
              file=sys.stderr)
    with clock.phase("mlflow"):
        recorder.set_tags(stop)
    return history, stop


def _publish(job: PreparedTraining, history: list[EpochRecord], stop: dict[str, Any], recorder: Recorder,
             clock: StageClock, root: Path) -> dict[str, Any]:
    """Log the pictures, model and weights; write ``models/<variant>/`` and the history; end the run."""
    import torch

    from bplab.params.metrics import SECONDS
    from bplab.train.loop import history_columns

    model = job.model.cpu()  # saved and logged for CPU, wherever it trained
    step_losses = steps = None
    if job.task.kind == "regression":  # the steps of the recorded epochs
        step_losses = [v for r in history for v in r.step_losses]
        steps = [n for r in history for n in r.step_numbers()]
    metrics = history_columns(history)
    epochs, _ = metrics.pop("epoch"), metrics.pop(SECONDS)
    initial = {k: v.cpu().numpy() for k, v in job.initial_weights.items()}
    with clock.phase("pictures"):
        figures = {
            "learning_curves.png": plots.learning_curves(epochs, metrics, f"{job.name}: learning curves",
                                                         step_losses, steps),
            "weights.png": plots.weight_histograms(initial, _weights(model),
                                                   f"{job.name}: weights ({job.variant.init} init)"),
        }
    with clock.phase("mlflow"):
        recorder.log_figures(figures)
    with clock.phase("mlflow_model"):
        model_info = recorder.log_model(model, job.val_xy[0][:8].cpu())
        recorder.log_state_dict(model.state_dict())
    record = {"run_id": recorder.run_id, "experiment_id": recorder.experiment_id, "model_uri": model_info.model_uri,
              "model_id": model_info.model_id, "variant": job.name, "dataset": job.variant.dataset,
              "task": job.task.kind, "n_inputs": int(job.train_xy[0].shape[1]), "n_outputs": job.n_out,
              "final": history[-1].metrics, **stop}

    def fill(staging: Path) -> None:
        torch.save(model, staging / WHOLE_MODEL_FILE)
        torch.save(model.state_dict(), staging / STATE_DICT_FILE)
        (staging / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")

    with clock.phase("outputs"):
        publish_directory(model_dir(job.name, root), fill)
        _write_history(history_file(job.name, root), history)
    with clock.phase("mlflow"):
        recorder.end()
    return record


def train(name: str, params: Params, root: Path = Path(".")) -> dict[str, Any] | None:
    """Train variant ``name`` per params.yaml, log it to MLflow, and write its DVC outputs.

    Resumes from ``checkpoints/<variant>.pt`` when an earlier start with the same params was
    interrupted. Under ``torchrun`` every rank trains its share and rank 0 alone logs and writes.
    Returns the contents of ``run.json`` (run id, experiment id, model URI, final metrics); None
    on the other ranks.
    """
    variant = params.variant(name)
    from bplab.train import distributed

    clock = StageClock(f"train@{name}")
    with distributed.joined(params.device) as placement:
        # A rank that fails here (its own data, disk or device) ends every rank, with its error.
        job = distributed.together(placement, lambda: _prepare(name, params, variant, placement, root))
        _resume(job)
        if not placement.is_main:  # the other ranks train their shares; rank 0 logs and writes
            _fit(job, lambda records: None)
            return None
        where = f" on {placement.world} ranks" if placement.world > 1 else ""
        print(f"train@{name}: {job.why}; device {placement.device}{where}", file=sys.stderr)
        reproduction = _reproduction(root, params, name)
        tags = store.run_tags(dataset=variant.dataset, stage="train", variant=name, changes=reproduction["changes"])
        with ExitStack() as run:
            with clock.phase("mlflow_setup"):
                recorder = run.enter_context(
                    Recorder.run(variant.dataset, name, tags, run_id=job.resume and job.resume.run_id,
                                 system_metrics_s=params.tracking.system_metrics))
            history, stop = _fit_recorded(job, params, recorder, clock, reproduction)
            record = _publish(job, history, stop, recorder, clock, root)
    clock.finish()
    return record
