"""Learning-rate schedules and early stopping, through the one training loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bplab.params.load import load_params
from bplab.params.schema import EarlyStopping, VariantParams
from bplab.testing.scratch import REPO
from bplab.train.loop import EpochPlan, EpochRecord, fit
from bplab.train.schedules import LrScheduleAndStopping, build_controls
from support.training import make_data, setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = load_params(REPO / "params.yaml")
BOSTON = PARAMS.train["boston_module"]  # 128 rows, batch 32: 4 steps per epoch
ADAM = PARAMS.train["boston_adam"]  # two parameter groups
SCHEDULES = {
    "step": {"name": "step", "step_size": 3, "gamma": 0.5},
    "multistep": {"name": "multistep", "milestones": [2, 5], "gamma": 0.1},
    "exponential": {"name": "exponential", "gamma": 0.9},
    "cosine": {"name": "cosine", "eta_min": 0.0001},
    "onecycle": {"name": "onecycle", "max_lr": 0.01},
    "plateau": {"name": "plateau", "patience": 1, "factor": 0.5, "threshold": 0.5},
}


def variant(base: VariantParams, **changes) -> VariantParams:
    """``base`` with ``changes``, validated as params.yaml would be."""
    return type(base).model_validate(base.model_dump() | changes)


def train(v: VariantParams, epochs: int, controls_state: dict | None = None, first_epoch: int = 1,
          model_state: tuple | None = None,
          record_every: int = 1) -> tuple[list[EpochRecord], torch.nn.Module, LrScheduleAndStopping, int]:
    """Train ``v`` on tiny Boston-like data, as the train stage does; optionally from a saved state."""
    x, y = make_data("boston", 128)
    test = make_data("boston", 64, seed=7)
    model, optimizer, task, generator = setup(v, 0, x.shape[1])
    controls = build_controls(optimizer, v, len(x), task.has_accuracy, "train.test")
    if model_state is not None:
        model.load_state_dict(model_state[0])
        optimizer.load_state_dict(model_state[1])
        generator.set_state(model_state[2])
        controls.load_state_dict(controls_state)
    records: list[EpochRecord] = []
    last = fit(model, optimizer, task, (x, y), test, EpochPlan(epochs, v.batch_size, None, v.shuffle, record_every),
               generator, records.extend, first_epoch=first_epoch, report_every_s=0, controls=controls)
    return records, model, controls, last


def reference_lrs(v: VariantParams, epochs: int, eval_losses: list[float]) -> list[list[float]]:
    """Each epoch's starting learning rates, stepping the torch scheduler by hand as its docs show."""
    model, optimizer, task, _ = setup(v, 0, 13)
    scheduler = build_controls(optimizer, v, 128, task.has_accuracy, "train.test").scheduler
    steps_per_epoch = math.ceil(128 / v.batch_size)
    lrs = []
    for epoch in range(epochs):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        if v.scheduler.name == "onecycle":
            for _ in range(steps_per_epoch):
                optimizer.step()
                scheduler.step()
        elif v.scheduler.name == "plateau":
            scheduler.step(eval_losses[epoch])
        else:
            optimizer.step()
            scheduler.step()
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_sets_the_learning_rate_torch_gives(name: str) -> None:
    v = variant(BOSTON, batch_size=32, scheduler=SCHEDULES[name])
    records, *_ = train(v, 8)
    logged = [r.metrics["lr"] for r in records]
    expected = [row[0] for row in reference_lrs(v, 8, [r.metrics["val_loss"] for r in records])]
    assert logged == pytest.approx(expected, rel=1e-12)
    assert len(set(logged)) > 1, "the schedule never changed the learning rate"
    assert logged[0] == pytest.approx(0.01 / 25 if name == "onecycle" else BOSTON.lr)  # onecycle: max_lr / 25


def test_several_param_groups_log_one_lr_series_each() -> None:
    v = variant(ADAM, scheduler=SCHEDULES["exponential"])
    records, *_ = train(v, 3)
    assert [k for k in records[0].metrics if k.startswith("lr")] == ["lr/hidden", "lr/regression"]
    assert [r.metrics["lr/hidden"] for r in records] == pytest.approx([1e-4, 0.9e-4, 0.81e-4])
    assert [r.metrics["lr/regression"] for r in records] == pytest.approx([1e-2, 0.9e-2, 0.81e-2])


def test_without_a_schedule_the_tutorials_learning_rate_is_logged_unchanged() -> None:
    records, *_ = train(BOSTON, 5)
    assert [r.metrics["lr"] for r in records] == [BOSTON.lr] * 5


def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    # lr 0.1 on standardized data overshoots: val_loss soon stops improving
    v = variant(BOSTON, lr=0.05, batch_size=16, early_stopping={"metric": "val_loss", "patience": 3,
                                                                 "min_delta": 0.5})
    records, _, controls, last = train(v, 200)
    stopper = controls.stopper
    losses = [r.metrics["val_loss"] for r in records]
    assert last == stopper.stopped_epoch == records[-1].epoch < 200
    assert last == stopper.best_epoch + 3
    best = losses[stopper.best_epoch - 1]
    assert stopper.best == best and all(loss > best - 0.5 for loss in losses[stopper.best_epoch:])
    assert records[-1].final and not any(r.final for r in records[:-1])
    assert controls.stop_record(last, 200) == {
        "stopped_epoch": last, "best_epoch": stopper.best_epoch,
        "stop_reason": f"early stopping: val_loss did not improve by more than 0.5 for 3 epochs "
                       f"(best {best:.6g} at epoch {stopper.best_epoch})"}


def test_early_stopping_between_recorded_epochs_records_the_stopping_epoch_last() -> None:
    v = variant(BOSTON, lr=0.05, batch_size=16, early_stopping={"metric": "val_loss", "patience": 3,
                                                                 "min_delta": 0.5})
    every, _, _, last = train(v, 200)
    sparse, _, controls, sparse_last = train(v, 200, record_every=7)
    assert sparse_last == last and last % 7 != 0  # every epoch was measured for the stopper; it stopped alike
    assert [r.epoch for r in sparse] == [1, *range(7, last, 7), last]
    assert sparse[-1].final and sparse[-1].metrics == every[-1].metrics


def test_restore_best_ends_with_the_best_epochs_weights() -> None:
    stopping = {"metric": "val_loss", "patience": 3, "min_delta": 0.5}
    v = variant(BOSTON, lr=0.05, batch_size=16, early_stopping=stopping | {"restore_best": True})
    _, restored, controls, last = train(v, 200)
    best_epoch = controls.stopper.best_epoch
    assert best_epoch < last
    _, trained_to_best, _, _ = train(variant(BOSTON, lr=0.05, batch_size=16), best_epoch)
    for key, value in trained_to_best.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    _, not_restored, _, _ = train(variant(v, early_stopping=stopping), 200)
    assert not torch.equal(not_restored.state_dict()["regression.weight"], restored.state_dict()["regression.weight"])


def test_accuracy_is_watched_upwards_and_a_loss_downwards() -> None:
    from bplab.train.schedules import Stopper

    for metric, better, worse in (("val_acc", 0.9, 0.8), ("val_loss", 0.8, 0.9)):
        stopper = Stopper(EarlyStopping(metric=metric, patience=1))
        stopper.best = (better + worse) / 2
        assert stopper.improved(better) and not stopper.improved(worse)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["onecycle", "plateau"])
def test_a_resumed_training_continues_its_schedule_and_early_stopping_exactly(name: str) -> None:
    v = variant(BOSTON, epochs=60, lr=0.01, batch_size=32, scheduler=SCHEDULES[name],
                early_stopping={"metric": "val_loss", "patience": 2, "min_delta": 0.2, "restore_best": True})
    straight, straight_model, straight_controls, straight_last = train(v, 60)
    assert straight_controls.stopped, "pick settings under which early stopping ends the training"

    # Killed halfway: what the checkpoint keeps is taken at a report, as the train stage takes it.
    half = straight_last // 2
    x, y = make_data("boston", 128)
    model, optimizer, task, generator = setup(v, 0, x.shape[1])
    controls = build_controls(optimizer, v, len(x), task.has_accuracy, "train.test")
    first: list[EpochRecord] = []
    saved: dict = {}

    def on_epochs(records: list[EpochRecord]) -> None:
        first.extend(records)
        if first[-1].epoch == half:
            saved.update(copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "generator": generator.get_state(), "controls": controls.state_dict()}))
            raise _Killed

    with pytest.raises(_Killed):
        fit(model, optimizer, task, (x, y), make_data("boston", 64, seed=7), EpochPlan(60, 32, None, v.shuffle),
            generator, on_epochs, report_every_s=0, controls=controls)
    rest, resumed_model, resumed_controls, resumed_last = train(
        v, 60, controls_state=saved["controls"], first_epoch=half + 1,
        model_state=(saved["model"], saved["optimizer"], saved["generator"]))

    assert [(r.epoch, r.metrics) for r in first + rest] == [(r.epoch, r.metrics) for r in straight]
    assert resumed_last == straight_last
    assert resumed_controls.stop_record(resumed_last, 60) == straight_controls.stop_record(straight_last, 60)
    for key, value in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
