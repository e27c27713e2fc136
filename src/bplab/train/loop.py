"""The one training loop every variant uses: full-batch or mini-batch, any task, any optimizer.

Batches are slices (or index_selects, when shuffling) of tensors already in memory. Losses and
correct counts accumulate on tensors and are read once per report, so the hot loop never waits
on a host sync. A loss that turns NaN or infinite stops training, naming the epoch and step.

A training records the epochs of :meth:`EpochPlan.recorded`: the first, every k-th and the last
(``tracking.max_epoch_points`` sets k). Only those are evaluated and have their right
predictions counted; the others do what the tutorials' loops do (forward, backward, step),
which for full-batch flower training is most of the time. Early stopping and the plateau
schedule, which watch a metric, have every epoch measured, and the stopping epoch recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bplab.data.catalog import TaskKind
from bplab.errors import BplabError
from bplab.params.metrics import SECONDS
from bplab.train.distributed import Placement, all_sum
from bplab.train.schedules import LrScheduleAndStopping, learning_rates, lr_names

SINGLE_PROCESS = Placement(0, 1, torch.device("cpu"))
# torch's at::internal::GRAIN_SIZE: element-wise ops and reductions on fewer elements run on one
# thread whatever the thread count, so their results do not depend on it.
GRAIN_SIZE = 32768
# bplab.params.metrics.EPOCH_METRICS are the per-epoch metrics, computed in _materialize, followed in each
# record by the learning rates the epoch started with (schedules.lr_names), and metrics.SECONDS
# its wall time. Whatever records
# epochs iterates over a record's metrics: MLflow, the CSV, checkpoints, the progress bar,
# run.json's final values and the learning curves.


class TrainingDiverged(BplabError):
    """The training loss became NaN or infinite."""


class BatchSizeError(BplabError):
    """The batch size does not fit the model and data (a 1-row batch for BatchNorm)."""


@dataclass(frozen=True)
class Task:
    """Loss and accuracy for one kind of target (class ids, 0/1 column, real-valued column)."""

    kind: TaskKind

    @property
    def has_accuracy(self) -> bool:
        return self.kind != "regression"

    def loss(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """CrossEntropy, BCEWithLogits or MSE, as in the tutorials."""
        if self.kind == "multiclass":
            return F.cross_entropy(output, target, reduction=reduction)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(output, target, reduction=reduction)
        return F.mse_loss(output, target, reduction=reduction)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Number of right predictions, as a tensor (argmax for classes, logit > 0 for binary)."""
        if self.kind == "multiclass":
            return (output.argmax(dim=1) == target).sum()
        return ((output > 0).to(target.dtype) == target).sum()


@dataclass(frozen=True)
class EpochPlan:
    """How to iterate: epochs, batch sizes (None = the whole split at once), shuffling, and every
    how many epochs one is recorded (see :func:`bplab.params.schema.record_stride`)."""

    epochs: int
    batch_size: int | None
    eval_batch_size: int | None
    shuffle: bool
    record_every: int = 1

    def recorded(self, epoch: int) -> bool:
        """Whether ``epoch`` is recorded (logged, kept in the history): the first, every
        ``record_every``-th, and the last."""
        return epoch == 1 or epoch % self.record_every == 0 or epoch == self.epochs


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's results as plain numbers: its :data:`bplab.params.metrics.EPOCH_METRICS` (those of the task) and
    learning rates, each step's training loss, its wall time, and whether it is the training's last."""

    epoch: int
    metrics: dict[str, float]
    step_losses: list[float]
    seconds: float
    final: bool = False  # the schedule's last epoch, or the one where early stopping ended training

    def logged(self) -> dict[str, float]:
        """What MLflow records of the epoch: its metrics and its wall time."""
        return self.metrics | {SECONDS: self.seconds}

    def step_numbers(self) -> range:
        """The training's numbers (from 1) of this epoch's steps: every epoch has as many, so they
        follow from the epoch alone, whichever epochs before it were recorded."""
        per_epoch = len(self.step_losses)
        return range((self.epoch - 1) * per_epoch + 1, self.epoch * per_epoch + 1)


def history_columns(history: list[EpochRecord]) -> dict[str, list[float]]:
    """The history as columns: ``epoch``, each metric the records have, and :data:`SECONDS`."""
    names = list(history[0].metrics) if history else []
    return {"epoch": [r.epoch for r in history], **{name: [r.metrics[name] for r in history] for name in names},
            SECONDS: [r.seconds for r in history]}


@dataclass(slots=True)
class _Pending:
    """An epoch's results still on the device, read later together with other epochs.

    Kept as the loop produced them (one 0-d tensor per step) so that an epoch adds no stacking
    or arithmetic of its own: with full-batch training an epoch is a single step, and a few extra
    tensor ops per epoch would cost as much as the step itself. An epoch that was not measured
    (not recorded, and nothing watches its metrics) has only its step losses, which are still
    read, so that a divergence is named at the epoch and step where it happened.
    """

    epoch: int
    step_losses: list[torch.Tensor]  # each step's mean loss over its whole batch
    batch_sizes: list[int]
    correct: list[torch.Tensor]  # right predictions per step (empty for regression or unmeasured)
    val_loss: torch.Tensor | None  # None: not measured
    val_correct: torch.Tensor | None
    lrs: list[float]  # each parameter group's learning rate as the epoch began
    seconds: float
    recorded: bool = True


def _materialize(pending: list[_Pending], n_train: int, n_val: int, has_accuracy: bool,
                 lr_names: list[str]) -> tuple[list[tuple[EpochRecord, bool]], TrainingDiverged | None]:
    """Read a batch of epochs to host numbers with one transfer per kind of value.

    Returns the measured epochs that are finite, each with whether it is recorded, and the error
    for the first epoch whose loss is not finite.
    """
    measured = [p for p in pending if p.val_loss is not None]
    steps = torch.stack([t for p in pending for t in p.step_losses]).tolist()
    val_losses = iter(torch.stack([p.val_loss for p in measured]).tolist() if measured else [])
    if has_accuracy and measured:
        correct = torch.stack([t for p in measured for t in p.correct]).tolist()
        val_correct = iter(torch.stack([p.val_correct for p in measured]).tolist())
    # Steps and right-prediction counts are walked separately: under torchrun an epoch's counts
    # arrive already summed over ranks and steps, as one value.
    records, offset, correct_offset = [], 0, 0
    for p in pending:
        count = len(p.step_losses)
        step_losses = steps[offset: offset + count]
        offset += count
        if p.val_loss is None and all(map(math.isfinite, step_losses)):  # not measured: only checked
            continue
        train_loss = _mean_loss(step_losses, p.batch_sizes, n_train)
        if train_loss is None:
            return records, _diverged(step_losses, p.epoch)
        metrics = {"train_loss": train_loss, "val_loss": next(val_losses)}
        if has_accuracy:
            metrics["train_acc"] = sum(correct[correct_offset: correct_offset + len(p.correct)]) / n_train
            metrics["val_acc"] = next(val_correct) / n_val
        metrics |= zip(lr_names, p.lrs)
        correct_offset += len(p.correct)
        records.append((EpochRecord(p.epoch, metrics, step_losses, p.seconds), p.recorded))
    return records, None


def _mean_loss(step_losses: list[float], batch_sizes: list[int], n_train: int) -> float | None:
    """The epoch's training loss (the steps' losses weighted by their batch sizes), or None when a
    step's loss is not finite or their sum overflows (``math.fsum`` raises on both, where ``inf``
    and ``-inf`` meet)."""
    if not all(map(math.isfinite, step_losses)):
        return None
    try:
        return math.fsum(v * size for v, size in zip(step_losses, batch_sizes)) / n_train
    except OverflowError:
        return None


def _diverged(step_losses: list[float], epoch: int) -> TrainingDiverged:
    """The error for an epoch whose training loss is not finite, naming the first bad step."""
    bad = next((j for j, v in enumerate(step_losses) if not math.isfinite(v)), None)
    where = (f"loss is {step_losses[bad]} at epoch {epoch}, step {bad + 1} of {len(step_losses)}" if bad is not None
             else f"the losses of epoch {epoch}'s {len(step_losses)} steps sum past the largest float")
    return TrainingDiverged(f"training diverged: {where}; lower the learning rate or check the inputs")


def _batches(n: int, batch_size: int | None, order: torch.Tensor | None):
    size = batch_size or n
    for start in range(0, n, size):
        yield start, (None if order is None else order[start: start + size]), min(size, n - start)


def check_schedule(model: nn.Module, n_train: int, schedule: EpochPlan, world: int = 1) -> None:
    """Refuse a batch size that gives BatchNorm a batch (or, under torchrun, a rank's share of
    one) of fewer than two rows: it cannot compute batch statistics from one row, and would fail
    mid-epoch. Shares of no rows are fine without BatchNorm."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    size = schedule.batch_size or n_train
    for batch in sorted({min(size, n_train), n_train % size or size}):  # the last batch, and a full one
        smallest = min(Placement(rank, world, torch.device("cpu")).shard(0, batch)[1] for rank in range(world))
        if smallest >= 2:
            continue
        if world > 1:
            raise BatchSizeError(
                f"batch_size {size} with {world} ranks gives a rank {smallest} row(s) of a batch of {batch} "
                f"(of {n_train} training rows), and BatchNorm cannot train on fewer than 2; choose another "
                "batch_size or number of ranks")
        if batch < size:
            raise BatchSizeError(
                f"batch_size {size} leaves a last batch of 1 row out of {n_train} training rows, and "
                "BatchNorm cannot train on one row; choose another batch_size or number of rows")
        raise BatchSizeError(f"batch_size {size} gives batches of one row, and BatchNorm cannot train on one row")


def has_mode_dependent_layers(model: nn.Module) -> bool:
    """Whether ``model`` computes differently in train and eval mode (BatchNorm, Dropout)."""
    return any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd))
               for m in model.modules())


@torch.no_grad()
def evaluate_sums(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                  mode_dependent: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean loss and number of right predictions of ``model`` on ``(x, y)`` in eval mode, as 0-d tensors.

    The model is switched to eval mode and back only when that changes its outputs: walking the
    module tree twice per epoch costs more than a full-batch step of the flower models.
    ``mode_dependent`` is :func:`has_mode_dependent_layers` of the model, if already known.
    """
    if mode_dependent is None:
        mode_dependent = has_mode_dependent_layers(model)
    switch = model.training and mode_dependent
    if switch:
        model.eval()
    n = len(x)
    if batch_size is None or batch_size >= n:
        out = model(x)
        loss, correct = task.loss(out, y), (task.correct(out, y) if task.has_accuracy else None)
    else:
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device) if task.has_accuracy else None
        for start, _, size in _batches(n, batch_size, None):
            out = model(x[start: start + size])
            target = y[start: start + size]
            loss_sum += task.loss(out, target, reduction="sum")
            if correct is not None:
                correct += task.correct(out, target)
        loss = loss_sum / n
    if switch:
        model.train()
    return loss, correct


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    schedule: EpochPlan,
    generator: torch.Generator,
    on_epochs: Callable[[list[EpochRecord]], None],
    first_epoch: int = 1,
    report_every_s: float = 1.0,
    placement: Placement = SINGLE_PROCESS,
    controls: LrScheduleAndStopping | None = None,
) -> int:
    """Train ``model`` from ``first_epoch`` to ``schedule.epochs``, evaluating on the validation
    split ``val`` each recorded epoch (:meth:`EpochPlan.recorded`); return the last epoch trained (earlier when
    ``controls``' early stopping ends the training).

    Every ``report_every_s`` seconds (at the next recorded epoch, and after the last epoch) the
    recorded epochs since the last report are read from the device in one go and passed to
    ``on_epochs`` (logging, progress, checkpoints). Raises :class:`TrainingDiverged` at the
    report that sees a non-finite loss.
    ``controls`` (the learning-rate schedule and early stopping) step after each batch or epoch;
    when they watch a metric, each epoch is read as soon as it ends.

    Under ``torchrun`` (``placement.world > 1``, ``model`` wrapped in DistributedDataParallel)
    every rank draws the same order, trains on its share of each global batch, and the loss is
    weighted so that the averaged gradient is the global batch's; the epoch's sums are added up
    across ranks once per epoch.
    """
    x, y = train
    n = len(x)
    check_schedule(model, n, schedule, placement.world)
    controls = controls or LrScheduleAndStopping(names=lr_names(optimizer))
    shuffle = schedule.shuffle and (schedule.batch_size or n) < n
    mode_dependent = has_mode_dependent_layers(model)
    reports = _Reports(on_epochs, n, len(val[0]), task.has_accuracy, controls.names)
    last_report = time.perf_counter()
    epoch = first_epoch - 1
    model.train()
    with _single_thread_when_small(model, x, max(schedule.batch_size or n, schedule.eval_batch_size or len(val[0]))):
        while epoch < schedule.epochs:
            epoch += 1
            order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
            done = _epoch(model, optimizer, task, train, val, schedule, epoch, order, placement, controls,
                          mode_dependent)
            reports.pending.append(done)
            metrics = reports.read().metrics if controls.needs_epoch_metrics else None
            stop = controls.after_epoch(epoch, metrics, model)
            now = time.perf_counter()
            # Reports end at a recorded epoch, so that the state passed along (a checkpoint) is that epoch's.
            if (done.recorded and now - last_report >= report_every_s) or stop or epoch == schedule.epochs:
                reports.send(final=stop or epoch == schedule.epochs)
                last_report = now
            if stop:
                break
    controls.finish(model)
    return epoch


@contextlib.contextmanager
def _single_thread_when_small(model: nn.Module, x: torch.Tensor, rows: int):
    """Run on one CPU thread while every tensor of a step (a batch of ``rows`` rows, the widest
    layer's activations, each parameter) is below :data:`GRAIN_SIZE`.

    Such tensors are too small for a second thread to share, yet the ops that may hand them to
    one (matrix products, the losses) then wait for it; on a busy machine that wait dominates a
    full-batch flower step many times over. Below the grain size torch's element-wise ops and
    reductions do not split their work, so they give the same numbers either way.
    """
    params = list(model.parameters())
    widest = max([x[0].numel()] + [p.shape[0] for p in params if p.dim()])
    small = (x.device.type == "cpu" and rows * widest < GRAIN_SIZE
             and all(p.numel() < GRAIN_SIZE for p in params))
    threads = torch.get_num_threads()
    if small and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, train: tuple[torch.Tensor, torch.Tensor],
           val: tuple[torch.Tensor, torch.Tensor], schedule: EpochPlan, epoch: int, order: torch.Tensor | None,
           placement: Placement, controls: LrScheduleAndStopping, mode_dependent: bool) -> _Pending:
    """Train one epoch; measure it (learning rates, right predictions, evaluation) only when it is
    recorded or ``controls`` watch its metrics."""
    recorded = schedule.recorded(epoch)
    measured = recorded or controls.needs_epoch_metrics
    started = time.perf_counter()
    lrs = learning_rates(optimizer) if measured else []
    step_losses, correct, batch_sizes = _train_epoch(model, optimizer, task, train, schedule.batch_size, order,
                                                     placement, controls.after_batch,
                                                     count_correct=measured and task.has_accuracy)
    val_loss = val_correct = None
    if measured:
        val_loss, val_correct = evaluate_sums(model, task, *val, schedule.eval_batch_size, mode_dependent)
    return _Pending(epoch, step_losses, batch_sizes, correct, val_loss, val_correct, lrs,
                    time.perf_counter() - started, recorded)


class _Reports:
    """Epochs on their way to ``on_epochs``: still on the device (``pending``), or read (``ready``:
    the recorded ones)."""

    def __init__(self, on_epochs: Callable[[list[EpochRecord]], None], n_train: int, n_val: int,
                 has_accuracy: bool, lr_names: list[str]) -> None:
        self.on_epochs = on_epochs
        self.shape = (n_train, n_val, has_accuracy, lr_names)
        self.pending: list[_Pending] = []
        self.ready: list[EpochRecord] = []
        self.latest: EpochRecord | None = None  # the last measured epoch, recorded or not

    def read(self) -> EpochRecord | None:
        """Read the pending epochs to host numbers and return the last measured one; on a
        divergence, report the recorded epochs before it and raise."""
        records, diverged = _materialize(self.pending, *self.shape)
        self.pending = []
        self.ready += [record for record, recorded in records if recorded]
        if records:
            self.latest = records[-1][0]
        if diverged is not None:
            if self.ready:
                self.on_epochs(self.ready)  # the finite epochs before a divergence are kept too
            raise diverged
        return self.latest

    def send(self, final: bool) -> None:
        """Pass the recorded epochs so far to ``on_epochs``; when training ends, the last epoch
        (recorded, or where early stopping ended it) goes last, marked ``final``."""
        if self.pending:
            self.read()
        if final:
            if not self.ready or self.ready[-1].epoch != self.latest.epoch:
                self.ready.append(self.latest)
            self.ready[-1] = dataclasses.replace(self.ready[-1], final=True)
        if self.ready:
            self.on_epochs(self.ready)
        self.ready = []


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                 train: tuple[torch.Tensor, torch.Tensor], batch_size: int | None, order: torch.Tensor | None,
                 placement: Placement, after_step: Callable[[], None] | None,
                 count_correct: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """One pass over the training split: each step's loss and, with ``count_correct``, right
    predictions (on the device), and each global batch's size. ``after_step`` runs after each
    optimizer step (a per-batch schedule)."""
    x, y = train
    step_losses: list[torch.Tensor] = []
    correct: list[torch.Tensor] = []
    batch_sizes: list[int] = []
    for start, index, size in _batches(len(x), batch_size, order):
        offset, rows = placement.shard(0, size)
        if index is None and rows == len(x):  # the whole split (full-batch training): no views to make
            xb, yb = x, y
        elif index is None:
            xb, yb = x[start + offset: start + offset + rows], y[start + offset: start + offset + rows]
        else:
            part = index[offset: offset + rows]
            xb, yb = x.index_select(0, part), y.index_select(0, part)
        out = model(xb)
        optimizer.zero_grad(set_to_none=True)
        if placement.world > 1:
            # This rank's sum over its share (0 for an empty share, where a mean would be NaN);
            # DDP averages gradients over ranks, so scaling by world / size makes that average
            # the gradient of the whole batch's mean loss.
            loss = task.loss(out, yb, reduction="sum")
            (loss * (placement.world / size)).backward()
        else:
            loss = task.loss(out, yb)
            loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        step_losses.append(loss.detach())
        batch_sizes.append(size)
        if count_correct:
            correct.append(task.correct(out.detach(), yb))
    if placement.world > 1:
        step_losses, correct = _global_sums(step_losses, correct, batch_sizes, placement)
    return step_losses, correct, batch_sizes


def _global_sums(step_losses: list[torch.Tensor], correct: list[torch.Tensor], batch_sizes: list[int],
                 placement: Placement) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each step's mean loss over the whole batch (from the ranks' sums) and the epoch's right
    predictions, summed over ranks."""
    local = [torch.stack(step_losses).double()]  # each step's sum over this rank's rows
    if correct:
        local.append(torch.stack(correct).sum().double().reshape(1))
    totals = all_sum(torch.cat(local), placement)
    sizes = torch.tensor(batch_sizes, dtype=torch.float64, device=totals.device)
    means = totals[: len(batch_sizes)] / sizes
    return list(means.unbind()), ([totals[-1]] if correct else [])
