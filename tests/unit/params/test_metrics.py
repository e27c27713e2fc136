"""Which way a metric improves is one rule, read by early stopping, schedules, sweeps and the champion."""

from __future__ import annotations

import pytest

from bplab.data import catalog
from bplab.params.metrics import EPOCH_METRICS, SCORES, direction, higher_is_better


@pytest.mark.parametrize(("metric", "best"), [
    ("train_loss", "min"), ("val_loss", "min"), ("train_acc", "max"), ("val_acc", "max"),
    ("val_mse", "min"), ("test_rmse", "min"), ("val_mae", "min"), ("val_r2", "max"), ("test_acc", "max"),
])
def test_losses_and_errors_go_down_accuracy_and_r2_go_up(metric: str, best: str) -> None:
    assert direction(metric) == best
    assert higher_is_better(metric) == (best == "max")


def test_an_explicit_mode_wins_over_the_metrics_own_direction() -> None:
    assert direction("val_loss", "max") == "max" and direction("val_acc", "min") == "min"


def test_every_score_and_epoch_metric_has_the_direction_the_champion_and_early_stopping_use() -> None:
    for task, scores in SCORES.items():
        for score in scores:
            champion = catalog.Champion(score)
            assert champion.higher_is_better == (direction(champion.selection) == "max"), (task, score)
    assert {m: direction(m) for m in EPOCH_METRICS} == {
        "train_loss": "min", "val_loss": "min", "train_acc": "max", "val_acc": "max"}
