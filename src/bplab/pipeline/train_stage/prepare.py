"""Prepare a training: everything it needs is read from params, data and the checkpoint here, once.

Fit and publish take the :class:`PreparedTraining` and never read params themselves: a knob is read
in one place, and what MLflow records of it (:class:`RunRecording`) is decided beside the model it
shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bplab.data import catalog, processed
from bplab.errors import ParamsError
from bplab.params.schema import Params, VariantParams, record_stride
from bplab.paths import checkpoint_file, processed_dir

if TYPE_CHECKING:
    import torch

    from bplab.train.checkpoint import Checkpoint, Resumption
    from bplab.train.distributed import Placement
    from bplab.train.loop import EpochPlan, Task
    from bplab.train.schedules import LrScheduleAndStopping


@dataclass(frozen=True)
class TrainingData:
    """The processed splits a training reads, on the training's device."""

    source: Path  # data/processed/<dataset>
    prepared: processed.Prepared
    task: Task
    train_xy: tuple[torch.Tensor, torch.Tensor]
    val_xy: tuple[torch.Tensor, torch.Tensor]  # per-epoch val_* metrics; the test split is evaluate's alone
    n_out: int
    digests: dict[str, str]  # of the train and val splits' contents: the checkpoint's fingerprint, MLflow's dataset


@dataclass
class TrainingState:
    """What a checkpoint holds and a resumed start restores: the model and everything that steps it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    controls: LrScheduleAndStopping  # the learning-rate schedule and early stopping
    generator: torch.Generator
    initial_weights: dict[str, torch.Tensor]

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``'s state, as the interrupted start left it."""
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.controls.load_state_dict(checkpoint.controls)
        self.generator.set_state(checkpoint.generator)
        self.initial_weights = checkpoint.initial_weights


@dataclass(frozen=True)
class RunRecording:
    """What the MLflow run records beside the epochs (rank 0's alone)."""

    dataset: str  # the MLflow experiment
    tags: dict[str, str]
    params: dict[str, Any]  # every training knob, as :meth:`Recorder.log_params` flattens it
    reproduction: dict[str, Any]  # what ``bplab reproduce`` needs (:func:`reproduction`)
    max_epoch_points: int | None
    system_metrics_s: float | None


@dataclass
class PreparedTraining:
    """A training ready to fit: its data, its state, its plan and where it resumes from."""

    name: str
    variant: VariantParams
    placement: Placement
    data: TrainingData
    state: TrainingState
    schedule: EpochPlan
    fingerprint: dict[str, str]
    checkpoint: Path
    recording: RunRecording | None  # None on ranks other than 0, which record nothing
    resume: Checkpoint | None = None
    why: str = ""

    @property
    def first_epoch(self) -> int:
        return self.resume.epoch + 1 if self.resume else 1


def matrix_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A copy of the model's weight matrices (not biases), as the weight histograms draw them."""
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters() if p.dim() >= 2}


def prepare(name: str, params: Params, placement: Placement, root: Path) -> PreparedTraining:
    """Data on the device, the seeded model, optimizer and schedule, the checkpoint's fingerprint,
    and (on rank 0) what the run records. Bad params raise :class:`ParamsError` naming the key."""
    import torch

    from bplab.models.architectures import build_model, initialize
    from bplab.train.checkpoint import code_digests, fingerprint
    from bplab.train.loop import BatchSizeError, EpochPlan, check_schedule
    from bplab.train.optim import build_optimizer
    from bplab.train.schedules import build_controls

    variant, key = params.variant(name), f"train.{name}"
    data = _data(variant.dataset, placement, root)
    n_train = len(data.train_xy[0])
    torch.manual_seed(params.seed)
    model = initialize(build_model(variant.model, data.train_xy[0].shape[1], data.n_out, f"{key}.model"),
                       variant.init)
    schedule = EpochPlan(variant.epochs, variant.batch_size, variant.eval_batch_size, variant.shuffle,
                         record_stride(variant.epochs, params.tracking.max_epoch_points))
    try:
        check_schedule(model, n_train, schedule, placement.world)
    except BatchSizeError as exc:
        raise ParamsError(f"{key}.batch_size: {exc}") from None
    code = code_digests(root, name, variant.dataset)
    digest = fingerprint({
        "params": {"variant": variant.model_dump(mode="json"), "seed": params.seed},
        "data": data.digests,
        "model": {k: list(value.shape) for k, value in model.state_dict().items()},
        "code": code,
    })
    initial_weights = {k: torch.from_numpy(v) for k, v in matrix_weights(model).items()}
    model = model.to(placement.device)
    optimizer = build_optimizer(model, variant, key)
    state = TrainingState(model, optimizer, build_controls(optimizer, variant, n_train, data.task.has_accuracy, key),
                          torch.Generator().manual_seed(params.seed), initial_weights)
    recording = _recording(name, params, data, state, placement, root, code) if placement.is_main else None
    return PreparedTraining(name, variant, placement, data, state, schedule, digest, checkpoint_file(name, root),
                            recording)


def _data(dataset: str, placement: Placement, root: Path) -> TrainingData:
    import torch

    from bplab.train.loop import Task

    source = processed_dir(dataset, root)
    prepared = processed.load(source)
    task = Task(catalog.dataset(dataset).task)
    train_xy, val_xy = (tuple(torch.from_numpy(a).to(placement.device) for a in prepared.splits[split])
                        for split in ("train", "val"))
    # Classes from every split: a train_limit may leave the highest class out of the training rows.
    n_out = int(max(y.max() for _, y in prepared.splits.values())) + 1 if task.kind == "multiclass" else 1
    digests = {split: processed.content_digest(*prepared.splits[split]) for split in ("train", "val")}
    return TrainingData(source, prepared, task, train_xy, val_xy, n_out, digests)


def logged_params(params: Params, name: str, n_parameters: int, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Every training knob, as :meth:`Recorder.log_params` flattens it (``lr``, ``model.hidden``,
    ``param_groups.hidden``, ...), and the sizes of the model and the data."""
    knobs = params.train[name].model_dump(mode="json")
    return knobs | {"seed": params.seed, "variant": name, "n_parameters": n_parameters,
                    "n_train": shapes["x_train"][0], "n_val": shapes["x_val"][0], "n_test": shapes["x_test"][0],
                    "n_features": shapes["x_train"][1]}


def reproduction(root: Path, params: Params, name: str, code: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``bplab reproduce`` and ``bplab diff`` need of this run: params.yaml, the resolved variant,
    dvc.lock, git changes, and ``code``, the sha256 of each code file of the stage
    (:func:`bplab.train.checkpoint.code_digests`; dvc.lock holds this stage's hashes of its previous
    run, since DVC writes a stage's entry after the stage ends)."""
    from bplab.params.yaml12 import read_yaml
    from bplab.tracking import store

    variant = params.train[name]
    resolved = {"variant": name, "seed": params.seed, "device": params.device,
                "tracking": params.tracking.model_dump(mode="json"), "train": variant.model_dump(mode="json"),
                "data": getattr(params.data, variant.dataset).model_dump(mode="json")}
    lock, file = root / "dvc.lock", root / "params.yaml"
    # The file as the stage read it (YAML 1.2: DVC writes 1e-05, which YAML 1.1 reads as a string); a
    # caller that passed params without one gets them as validated.
    raw = read_yaml(file.read_text()) if file.exists() else params.model_dump(mode="json")
    return {"params": raw, "resolved": resolved, "lock": lock.read_text() if lock.exists() else None,
            "changes": store.git_changes(), "code": code or {}}


def _recording(name: str, params: Params, data: TrainingData, state: TrainingState, placement: Placement,
               root: Path, code: dict[str, str]) -> RunRecording:
    from bplab.tracking import store

    dataset = params.train[name].dataset
    recorded = reproduction(root, params, name, code) | {"device": str(placement.device)}
    n_parameters = sum(p.numel() for p in state.model.parameters())
    knobs = logged_params(params, name, n_parameters, data.prepared.shapes()) | {
        "device": str(placement.device), "world_size": placement.world}
    # The validation split's digest, as evaluate tags it too: a train-only run says which split it validated on.
    tags = store.run_tags(dataset=dataset, stage="train", variant=name, changes=recorded["changes"]) | {
        "val_digest": data.digests["val"]}
    return RunRecording(dataset, tags, knobs, recorded, params.tracking.max_epoch_points,
                        params.tracking.system_metrics)


def resume(job: PreparedTraining) -> None:
    """The job's state from its checkpoint when rank 0 decides to resume it (every rank alike)."""
    resumption = _resumption(job.checkpoint, job.fingerprint, job.variant.epochs, job.placement)
    job.resume, job.why = resumption.checkpoint, resumption.why
    if job.resume is not None:
        job.state.restore(job.resume)


def _resumption(path: Path, expected: dict[str, str], epochs: int, placement: Placement) -> Resumption:
    """Rank 0 alone reads the checkpoint and decides, on its fingerprint; every rank follows that
    decision: it resumes from the same bytes, or starts afresh. (Ranks on other nodes have other
    disks, where a checkpoint may be missing or stale, and each rank deciding on its own
    fingerprint could resume where rank 0 started afresh.)"""
    from bplab.train import distributed
    from bplab.train.checkpoint import Checkpoint, Resumption

    decision, raw = distributed.together(placement, lambda: _decide(path, expected, epochs) if placement.is_main
                                         else (None, None))
    raw = distributed.from_main(raw, placement)
    if placement.is_main:
        return decision
    return Resumption(None if raw is None else Checkpoint.from_bytes(raw, path), "as rank 0 decided", False)


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
