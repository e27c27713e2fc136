"""The one training loop every variant uses: full-batch or mini-batch, any task, any optimizer.

Batches are slices (or index_selects, when shuffling) of tensors already in memory. Losses and
correct counts accumulate on tensors and are read once per epoch, so the hot loop never waits
on a host sync. A loss that turns NaN or infinite stops training, naming the epoch and step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bplab.errors import BplabError
from bplab.train.distributed import Placement, all_sum

TaskKind = Literal["multiclass", "binary", "regression"]
SINGLE_PROCESS = Placement(0, 1, torch.device("cpu"))
TASK_OF_DATASET: dict[str, TaskKind] = {"mnist": "multiclass", "flower": "binary", "boston": "regression"}


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
class Schedule:
    """How to iterate: epochs, batch sizes (None = the whole split at once), shuffling."""

    epochs: int
    batch_size: int | None
    eval_batch_size: int | None
    shuffle: bool


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's results as plain numbers (accuracies are None for regression)."""

    epoch: int
    train_loss: float
    eval_loss: float
    train_acc: float | None
    eval_acc: float | None
    step_losses: list[float]
    seconds: float


@dataclass(frozen=True)
class _Pending:
    """An epoch's results still on the device, read later together with other epochs."""

    epoch: int
    values: torch.Tensor  # train_loss, eval_loss, train_acc, eval_acc (NaN where undefined)
    step_losses: torch.Tensor
    seconds: float


def _materialize(pending: list[_Pending], has_accuracy: bool) -> tuple[list[EpochRecord], TrainingDiverged | None]:
    """Read a batch of epochs to host numbers with one transfer.

    Returns the finite epochs, and the error for the first epoch whose loss is not finite.
    """
    values = torch.stack([p.values for p in pending]).tolist()
    steps = torch.cat([p.step_losses for p in pending]).tolist()
    records, offset = [], 0
    for p, (train_loss, eval_loss, train_acc, eval_acc) in zip(pending, values):
        count = len(p.step_losses)
        step_losses = steps[offset: offset + count]
        offset += count
        if not math.isfinite(train_loss):
            bad = next(i for i, v in enumerate(step_losses) if not math.isfinite(v))
            return records, TrainingDiverged(
                f"training diverged: loss is {step_losses[bad]} at epoch {p.epoch}, step {bad + 1} of "
                f"{count}; lower the learning rate or check the inputs"
            )
        records.append(EpochRecord(
            p.epoch, train_loss, eval_loss, train_acc if has_accuracy else None,
            eval_acc if has_accuracy else None, step_losses, p.seconds,
        ))
    return records, None


def _batches(n: int, batch_size: int | None, order: torch.Tensor | None):
    size = batch_size or n
    for start in range(0, n, size):
        yield start, (None if order is None else order[start: start + size]), min(size, n - start)


def check_schedule(model: nn.Module, n_train: int, schedule: Schedule) -> None:
    """Refuse a batch size that leaves a last batch of one row when the model has BatchNorm.

    BatchNorm cannot compute batch statistics from a single row and would fail mid-epoch.
    """
    size = schedule.batch_size or n_train
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_batchnorm and n_train % size == 1:
        raise BatchSizeError(
            f"batch_size {size} leaves a last batch of 1 row out of {n_train} training rows, and "
            "BatchNorm cannot train on one row; choose another batch_size or number of rows"
        )


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
             batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in eval mode, as 0-d tensors."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start, _, size in _batches(len(x), batch_size, None):
        out = model(x[start: start + size])
        target = y[start: start + size]
        loss_sum += task.loss(out, target, reduction="sum")
        if task.has_accuracy:
            correct += task.correct(out, target)
    model.train(was_training)
    n = len(x)
    return loss_sum / n, (correct.double() / n if task.has_accuracy else None)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    schedule: Schedule,
    generator: torch.Generator,
    on_epochs: Callable[[list[EpochRecord]], None],
    first_epoch: int = 1,
    report_every_s: float = 1.0,
    placement: Placement = SINGLE_PROCESS,
) -> None:
    """Train ``model`` from ``first_epoch`` to ``schedule.epochs``, evaluating on ``test`` each epoch.

    Every ``report_every_s`` seconds (and after the last epoch) the epochs since the last report
    are read from the device in one go and passed to ``on_epochs`` (logging, progress,
    checkpoints). Raises :class:`TrainingDiverged` at the report that sees a non-finite loss.

    Under ``torchrun`` (``placement.world > 1``, ``model`` wrapped in DistributedDataParallel)
    every rank draws the same order, trains on its share of each global batch, and the loss is
    weighted so that the averaged gradient is the global batch's; the epoch's sums are added up
    across ranks once per epoch.
    """
    x, y = train
    n = len(x)
    check_schedule(model, n, schedule)
    shuffle = schedule.shuffle and (schedule.batch_size or n) < n
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    pending: list[_Pending] = []
    last_report = time.perf_counter()
    for epoch in range(first_epoch, schedule.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        step_sums, batch_sizes = [], []
        for start, index, size in _batches(n, schedule.batch_size, order):
            offset, rows = placement.shard(0, size)
            if index is None:
                xb, yb = x[start + offset: start + offset + rows], y[start + offset: start + offset + rows]
            else:
                part = index[offset: offset + rows]
                xb, yb = x.index_select(0, part), y.index_select(0, part)
            out = model(xb)
            loss = task.loss(out, yb)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting by this rank's share of the batch
            # makes that average the gradient of the whole batch's mean loss (a no-op alone).
            (loss * (rows * placement.world / size)).backward()
            optimizer.step()
            step_sums.append(loss.detach() * rows)
            batch_sizes.append(size)
            if task.has_accuracy:
                correct += task.correct(out.detach(), yb)
        totals = all_sum(torch.cat([torch.stack(step_sums).double(), correct.double().reshape(1)]), placement)
        step_losses = totals[:-1] / torch.tensor(batch_sizes, dtype=torch.float64, device=x.device)
        eval_loss, eval_acc = evaluate(model, task, *test, schedule.eval_batch_size)
        train_acc = totals[-1] / n if task.has_accuracy else nan
        values = torch.stack([totals[:-1].sum() / n, eval_loss, train_acc, nan if eval_acc is None else eval_acc])
        pending.append(_Pending(epoch, values, step_losses, time.perf_counter() - started))
        now = time.perf_counter()
        if now - last_report >= report_every_s or epoch == schedule.epochs:
            records, diverged = _materialize(pending, task.has_accuracy)
            if records:
                on_epochs(records)  # the finite epochs before a divergence are kept too
            if diverged is not None:
                raise diverged
            pending, last_report = [], now
