"""The metrics' names, and which way each improves: the one home of both.

Training, evaluation, schedules, early stopping, sweeps and the registry's champion all read these,
so a new score is named (and given its direction) here once. A leaf module: it imports nothing of
bplab, so the params models and the dataset catalog can both import it.
"""

from __future__ import annotations

from typing import Literal, get_args

# The per-epoch metrics every training computes (accuracies: classification only), in the column
# order of history/<variant>.csv: on the training rows, and on the validation split carved from
# them (data.<dataset>.preprocess.val_size). Early stopping and the plateau schedule watch one of
# them; the test split is never measured during training, so nothing can be chosen on it.
EpochMetricName = Literal["train_loss", "val_loss", "train_acc", "val_acc"]
EPOCH_METRICS: tuple[str, ...] = get_args(EpochMetricName)

# Each recorded epoch's wall time, logged after its metrics: a run whose tracking store holds an
# epoch's SECONDS holds all of that epoch (the recorder resumes logging after it).
SECONDS = "epoch_seconds"

# What evaluate scores a trained model by, per kind of task (bplab.evaluate.compute_metrics): on the
# validation split as val_<score> (what selection reads), on the test split as test_<score> (reported).
SCORES: dict[str, tuple[str, ...]] = {
    "multiclass": ("loss", "acc"),
    "binary": ("loss", "acc"),
    "regression": ("mse", "rmse", "mae", "r2"),
}
_HIGHER_IS_BETTER = ("acc", "r2")  # every other score is an error or a loss: lower is better


def higher_is_better(metric: str) -> bool:
    """Whether ``metric`` (``val_acc``, ``test_rmse``, ``train_loss``, ``r2``, ...) improves upwards."""
    return metric.rpartition("_")[2] in _HIGHER_IS_BETTER


def direction(metric: str, mode: Literal["min", "max"] | None = None) -> Literal["min", "max"]:
    """``mode`` when given, else the direction in which ``metric`` improves: ``max`` for an accuracy
    or r2, ``min`` for a loss or an error (early stopping's and the plateau schedule's ``mode: null``)."""
    return mode or ("max" if higher_is_better(metric) else "min")
