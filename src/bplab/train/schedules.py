"""What changes a training as it goes: the learning-rate schedule and early stopping.

Both come from a variant's params (``scheduler``, ``early_stopping``; see :mod:`bplab.params.schema`),
both are off by default (the tutorials train at a fixed rate for all their epochs), and both keep
their state in the checkpoint, so a resumed training continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from bplab.errors import ParamsError
from bplab.params.metrics import direction
from bplab.params.schema import (
    CosineSchedule,
    EarlyStopping,
    ExponentialSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    StepSchedule,
    VariantParams,
)


def lr_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The per-epoch metric names of the learning rates: ``lr`` for one parameter group, else
    ``lr/<group>`` for each (the layers of ``param_groups``, and ``rest``)."""
    groups = optimizer.param_groups
    return ["lr"] if len(groups) == 1 else [f"lr/{g.get('name', i)}" for i, g in enumerate(groups)]


def learning_rates(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's learning rate now, in :func:`lr_names` order."""
    return [float(g["lr"]) for g in optimizer.param_groups]


def _torch_scheduler(optimizer: torch.optim.Optimizer, variant: VariantParams,
                     steps_per_epoch: int) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    s = variant.scheduler
    if isinstance(s, StepSchedule):
        return lr_scheduler.StepLR(optimizer, s.step_size, s.gamma)
    if isinstance(s, MultiStepSchedule):
        return lr_scheduler.MultiStepLR(optimizer, s.milestones, s.gamma)
    if isinstance(s, ExponentialSchedule):
        return lr_scheduler.ExponentialLR(optimizer, s.gamma)
    if isinstance(s, CosineSchedule):
        return lr_scheduler.CosineAnnealingLR(optimizer, s.T_max or variant.epochs, s.eta_min)
    if isinstance(s, OneCycleSchedule):
        return lr_scheduler.OneCycleLR(
            optimizer, s.max_lr, total_steps=variant.epochs * steps_per_epoch, pct_start=s.pct_start,
            anneal_strategy=s.anneal_strategy, div_factor=s.div_factor, final_div_factor=s.final_div_factor,
            three_phase=s.three_phase, cycle_momentum=s.cycle_momentum)
    assert isinstance(s, PlateauSchedule)
    return lr_scheduler.ReduceLROnPlateau(
        optimizer, direction(s.monitor, s.mode), s.factor, s.patience, s.threshold, s.threshold_mode, s.cooldown,
        s.min_lr)


@dataclass
class Stopper:
    """Early stopping: watches one metric, keeps the best epoch (and its weights when they are to
    be restored), and says when patience has run out."""

    params: EarlyStopping
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_epoch: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        if direction(self.params.metric, self.params.mode) == "min":
            return value < self.best - self.params.min_delta
        return value > self.best + self.params.min_delta

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Take epoch ``epoch``'s metrics; True when training should stop after it."""
        value = metrics[self.params.metric]
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.params.restore_best:
                self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.params.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def reason(self) -> str:
        """Why training stopped, for the run's record."""
        p = self.params
        return (f"early stopping: {p.metric} did not improve by more than {p.min_delta:g} for {p.patience} epochs "
                f"(best {self.best:.6g} at epoch {self.best_epoch})")


@dataclass
class LrScheduleAndStopping:
    """The variant's learning-rate schedule and early stopping, stepped by the training loop."""

    scheduler: Any = None  # a torch scheduler, or None
    per_batch: bool = False  # onecycle steps after every batch, the others after every epoch
    monitor: str | None = None  # the metric the plateau schedule watches
    stopper: Stopper | None = None
    names: list[str] = field(default_factory=list)  # lr_names of the optimizer

    @property
    def needs_epoch_metrics(self) -> bool:
        """Whether each epoch's metrics must be read as soon as it ends (plateau, early stopping)."""
        return self.monitor is not None or self.stopper is not None

    @property
    def after_batch(self) -> Callable[[], None] | None:
        """What to call after each optimizer step: a per-batch schedule's ``step``, or None
        (nothing to call in the hot loop)."""
        return self.scheduler.step if self.per_batch else None

    def after_epoch(self, epoch: int, metrics: dict[str, float] | None, model: nn.Module) -> bool:
        """Step a per-epoch schedule and early stopping; True when training stops here.

        ``metrics`` are the epoch's, or None when neither needs them."""
        if self.scheduler is not None and not self.per_batch:
            if self.monitor is not None:
                self.scheduler.step(metrics[self.monitor])
            else:
                self.scheduler.step()
        return self.stopper is not None and self.stopper.update(epoch, metrics, model)

    def finish(self, model: nn.Module) -> None:
        """At the end of training: the best epoch's weights, when early stopping is to restore them."""
        if self.stopper is not None and self.stopper.best_weights is not None:
            model.load_state_dict(self.stopper.best_weights)

    def stop_record(self, last_epoch: int, epochs: int) -> dict[str, Any]:
        """The stopping epoch and the reason, recorded on the run and in ``run.json``."""
        if self.stopper is not None and self.stopper.stopped_epoch is not None:
            record = {"stopped_epoch": self.stopper.stopped_epoch, "stop_reason": self.stopper.reason()}
        else:
            record = {"stopped_epoch": last_epoch, "stop_reason": f"completed all {epochs} epochs"}
        if self.stopper is not None:
            record["best_epoch"] = self.stopper.best_epoch
        return record

    def state_dict(self) -> dict[str, Any]:
        """The schedule's and early stopping's state, for the checkpoint (tensors and plain values)."""
        state: dict[str, Any] = {}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.stopper is not None:
            s = self.stopper
            state["stopper"] = {"best": s.best, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
                                "stopped_epoch": s.stopped_epoch, "best_weights": s.best_weights}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict`."""
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.stopper is not None:
            for name, value in state["stopper"].items():
                setattr(self.stopper, name, value)

    @property
    def stopped(self) -> bool:
        """Whether early stopping has ended the training."""
        return self.stopper is not None and self.stopper.stopped_epoch is not None


def _check_watched_metrics(variant: VariantParams, has_accuracy: bool, key: str) -> None:
    watched = {f"{key}.early_stopping.metric": variant.early_stopping and variant.early_stopping.metric}
    if isinstance(variant.scheduler, PlateauSchedule):
        watched[f"{key}.scheduler.monitor"] = variant.scheduler.monitor
    for name, metric in watched.items():
        if metric and metric.endswith("_acc") and not has_accuracy:
            raise ParamsError(f"{name}: {metric} is not computed for {variant.dataset} (a regression); "
                              "use train_loss or val_loss")


def build_controls(optimizer: torch.optim.Optimizer, variant: VariantParams, n_train: int, has_accuracy: bool,
                   key: str) -> LrScheduleAndStopping:
    """The variant's schedule (stepping ``optimizer``) and early stopping. A watched metric the task
    does not compute (an accuracy of a regression) is a :class:`ParamsError` naming the key under ``key``."""
    _check_watched_metrics(variant, has_accuracy, key)
    stopper = Stopper(variant.early_stopping) if variant.early_stopping is not None else None
    controls = LrScheduleAndStopping(stopper=stopper, names=lr_names(optimizer))
    if variant.scheduler is not None:
        steps_per_epoch = math.ceil(n_train / (variant.batch_size or n_train))
        controls.scheduler = _torch_scheduler(optimizer, variant, steps_per_epoch)
        controls.per_batch = isinstance(variant.scheduler, OneCycleSchedule)
        controls.monitor = variant.scheduler.monitor if isinstance(variant.scheduler, PlateauSchedule) else None
    return controls
