"""The building blocks of every params section: :class:`Strict`, the number types, and what each
dataset's ``data.<name>.preprocess`` shares (:class:`PreprocessParams`).

A leaf of the package: dataset modules declare their params with these, and the params models of
:mod:`bplab.params.schema` build on them, so neither imports the other's side.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bplab.params.metrics import EpochMetricName


def _watchable(value: Any) -> Any:
    """Name what is wrong with a watched metric that is not one of :data:`bplab.params.metrics.EPOCH_METRICS`."""
    if isinstance(value, str) and value.startswith("test_"):
        raise ValueError(f"{value!r}: the test split is reported, never used to choose a model; watch a "
                         f"validation metric (val_loss, val_acc) or a training one")
    if isinstance(value, str) and value.startswith("eval_"):
        raise ValueError(f"{value!r} is now called {'val_' + value.removeprefix('eval_')!r}: per-epoch metrics "
                         "are measured on the validation split")
    return value


EpochMetric = Annotated[EpochMetricName, BeforeValidator(_watchable)]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what NumPy and scikit-learn accept as a seed
Width = Annotated[int, Field(gt=0, le=65536)]  # a layer's units: beyond this, memory runs out first


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, no silent type coercion, and no
    NaN or infinite numbers (``.inf`` seconds, a NaN learning rate)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)



class PreprocessParams(Strict):
    """What every dataset's ``data.<name>.preprocess`` holds, besides its own keys: the validation
    split carved from the training split (:func:`bplab.data.processed.carve_validation`). Per-epoch
    ``val_*`` metrics, early stopping, schedules, sweeps and the champion read it, never the test split."""

    val_size: Fraction = 0.1  # the share of the training rows held out for validation
    val_seed: Seed = 0  # which rows: a seeded permutation, the same on every machine
