"""The params models: a variant, its model, schedule and early stopping, tracking, and the whole
of params.yaml (:class:`Params`), its ``data`` section built from each dataset's own model.

Unknown keys, wrong types and impossible values are rejected, before any work is done or any
MLflow run is opened; :mod:`bplab.params.load` reads the file and names the full dotted key of
what is wrong (``train.mnist_mlp.lrr``) and what is allowed.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from bplab.errors import ParamsError
from bplab.models.architectures import ARCHITECTURES, MAX_PARAMETERS, TOO_MANY, linear_parameters
from bplab.params.fields import (
    EpochMetric,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    Strict,
    Width,
)
from bplab.params.optimizers import OPTIMIZERS, OptimizerName
from bplab.paths import NAME_LIMIT, name_too_long

InitName = Literal["default", "normal", "uniform", "constant", "xavier", "kaiming"]
ArchName = Literal[tuple(ARCHITECTURES)]  # type: ignore[valid-type]


# --- training --------------------------------------------------------------------------------

class ModelSpec(Strict):
    """Which tutorial network to build and its sizes; input/output widths come from the data."""

    arch: ArchName
    hidden: list[Width] = []
    init_scale: PositiveFloat = 0.01  # only twolayer: the tutorial's randn(...) * 0.01

    @field_validator("hidden")
    @classmethod
    def _hidden_layers_fit(cls, value: list[int]) -> list[int]:
        # Only the layers between hidden widths: the input width comes with the data, and
        # models.build_model checks the whole network before allocating it.
        count = linear_parameters(value)
        if count > MAX_PARAMETERS:
            raise ValueError(f"the layers between hidden widths {value} have {count:,} parameters; {TOO_MANY}")
        return value

    @model_validator(mode="after")
    def _hidden_fits_arch(self) -> ModelSpec:
        architecture = ARCHITECTURES[self.arch]
        least, most = architecture.least_hidden, architecture.most_hidden
        if len(self.hidden) < least or (most is not None and len(self.hidden) > most):
            wanted = f"exactly {least}" if least == most else f"at least {least}"
            raise ValueError(f"hidden: {self.arch} takes {wanted} hidden width(s), got {self.hidden}")
        return self


# --- learning-rate schedules (torch.optim.lr_scheduler; arguments keep torch's names) ----------

class StepSchedule(Strict):
    """StepLR: lr times ``gamma`` every ``step_size`` epochs."""

    name: Literal["step"]
    step_size: PositiveInt
    gamma: PositiveFloat = 0.1


class MultiStepSchedule(Strict):
    """MultiStepLR: lr times ``gamma`` at each of the ``milestones`` epochs."""

    name: Literal["multistep"]
    milestones: list[PositiveInt] = Field(min_length=1)
    gamma: PositiveFloat = 0.1

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"milestones must be strictly increasing epochs, got {value}")
        return value


class ExponentialSchedule(Strict):
    """ExponentialLR: lr times ``gamma`` after every epoch."""

    name: Literal["exponential"]
    gamma: PositiveFloat


class CosineSchedule(Strict):
    """CosineAnnealingLR from lr down to ``eta_min`` over ``T_max`` epochs (null: the variant's epochs)."""

    name: Literal["cosine"]
    T_max: PositiveInt | None = None  # noqa: N815 - torch's name
    eta_min: NonNegativeFloat = 0.0


class OneCycleSchedule(Strict):
    """OneCycleLR, stepped after every batch, over all the variant's epochs.

    ``cycle_momentum`` is off by default: on, it would replace the variant's own momentum (0 in
    the tutorials) by a 0.85-0.95 cycle.
    """

    name: Literal["onecycle"]
    max_lr: PositiveFloat
    pct_start: Fraction = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    three_phase: bool = False
    cycle_momentum: bool = False


class PlateauSchedule(Strict):
    """ReduceLROnPlateau: lr times ``factor`` when ``monitor`` stops improving for ``patience`` epochs.

    ``mode`` null means min for a loss, max for an accuracy.
    """

    name: Literal["plateau"]
    monitor: EpochMetric = "val_loss"
    mode: Literal["min", "max"] | None = None
    factor: Fraction = 0.1
    patience: NonNegativeInt = 10
    threshold: NonNegativeFloat = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: NonNegativeInt = 0
    min_lr: NonNegativeFloat = 0.0


Schedule = Annotated[StepSchedule | MultiStepSchedule | ExponentialSchedule | CosineSchedule
                     | OneCycleSchedule | PlateauSchedule, Field(discriminator="name")]
SCHEDULE_NAMES = ("step", "multistep", "exponential", "cosine", "onecycle", "plateau")


class EarlyStopping(Strict):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode`` null means min for a loss, max for an accuracy. With ``restore_best`` the model ends
    with the weights of its best epoch, which are then saved, logged and evaluated.
    """

    metric: EpochMetric = "val_loss"
    mode: Literal["min", "max"] | None = None
    patience: PositiveInt = 10
    min_delta: NonNegativeFloat = 0.0
    restore_best: bool = False


class VariantParams(Strict):
    """One model variant of the tutorials: model, loss (from the dataset), optimizer, schedule."""

    dataset: str  # one of params.yaml's datasets: (each load narrows this to them, see params_model)
    model: ModelSpec
    epochs: PositiveInt
    batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt | None = None
    shuffle: bool = True
    lr: PositiveFloat
    optimizer: OptimizerName = "sgd"
    momentum: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    init: InitName = "default"
    param_groups: dict[str, PositiveFloat] = {}
    scheduler: Schedule | None = None  # null: the learning rate stays as set (the tutorials)
    early_stopping: EarlyStopping | None = None  # null: train all the epochs

    @model_validator(mode="after")
    def _momentum_needs_an_optimizer_that_uses_it(self) -> VariantParams:
        if self.momentum and not OPTIMIZERS[self.optimizer].momentum:
            takers = " or ".join(name for name, kind in OPTIMIZERS.items() if kind.momentum)
            raise ValueError(f"momentum: {self.optimizer} has no momentum (its betas play that role); "
                             f"remove momentum, or use {takers}")
        return self


class TrackingParams(Strict):
    """How much of a training run is recorded (in MLflow and ``history/<variant>.csv``)."""

    # Longer runs record every k-th epoch (plus the first and last) so that at most this many
    # points per metric go to the store: 10000 epochs x 5 metrics cost MLflow's sqlite store ~4 s
    # of CPU, and its UI draws a few hundred points per curve anyway. The epochs in between are
    # trained but not evaluated (train.loop). None records every epoch.
    max_epoch_points: PositiveInt | None = 1000
    # MLflow's system metrics (CPU, memory, disk, network; GPU when present) on every training
    # run, sampled every this many seconds; null turns them off. A sample costs ~7 ms of CPU.
    system_metrics: Annotated[float, Field(ge=0.5)] | None = 2.0


def record_stride(count: int, max_points: int | None) -> int:
    """Every how many epochs (or steps) a series of ``count`` is recorded, for at most about
    ``max_points`` points (``tracking.max_epoch_points``; ``None``: every one)."""
    return 1 if max_points is None else max(1, -(-count // max_points))


class Params(Strict):
    """The whole of params.yaml. ``data`` holds one section per dataset, each validated by the
    params model its module declares (see :func:`params_model`)."""

    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking: TrackingParams = TrackingParams()
    datasets: list[str] = Field(min_length=1)
    data: BaseModel
    train: dict[str, VariantParams] = {}

    @field_validator("train")
    @classmethod
    def _variant_names(cls, value: dict[str, VariantParams]) -> dict[str, VariantParams]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"variant name {name!r} must be letters, digits and _ (it names stages and runs)")
            if len(name) > NAME_LIMIT:
                raise ValueError(f"variant {name_too_long(name)}")
        return value

    def variant(self, name: str) -> VariantParams:
        """``train.<name>``, or a :class:`ParamsError` listing the variants there are."""
        try:
            return self.train[name]
        except KeyError:
            raise ParamsError(f"train.{name}: no such variant in params.yaml; known: {', '.join(self.train)}") from None


class DatasetList(BaseModel):
    """The ``datasets:`` key alone, validated first: it decides how the rest is validated."""

    model_config = ConfigDict(extra="ignore", strict=True)
    datasets: list[str] = Field(min_length=1)


@cache
def params_model(datasets: tuple[str, ...]) -> type[Params]:
    """:class:`Params` for these datasets: ``data.<name>`` validated by each dataset's own params
    model, and a variant's ``dataset`` one of them."""
    from bplab.data.catalog import dataset

    sections: dict[str, Any] = {}
    for name in datasets:
        section = dataset(name).params
        try:
            sections[name] = (section, section())  # every key has a default: the section may be left out
        except ValidationError:
            sections[name] = (section, ...)
    data = create_model("DataParams", __base__=Strict, **sections)
    variant = create_model("VariantParams", __base__=VariantParams,
                           dataset=(Literal[datasets], ...))  # type: ignore[valid-type]
    return create_model("Params", __base__=Params, data=(data, ...), train=(dict[str, variant], {}))
