"""Optimizers from a variant's params, including per-layer learning rates (seed 004 §3.2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bplab.config import VariantParams
from bplab.errors import ParamsError
from bplab.models.architectures import layer_names, layer_parameters

# params.yaml's optimizer names (config.OptimizerName lists the same) and how each is built from
# the parameter groups and the variant's settings.
OPTIMIZERS: dict[str, Callable[[list[dict], VariantParams], torch.optim.Optimizer]] = {
    "sgd": lambda groups, v: torch.optim.SGD(groups, lr=v.lr, momentum=v.momentum, weight_decay=v.weight_decay),
    "rmsprop": lambda groups, v: torch.optim.RMSprop(groups, lr=v.lr, momentum=v.momentum,
                                                     weight_decay=v.weight_decay),
    "adam": lambda groups, v: torch.optim.Adam(groups, lr=v.lr, weight_decay=v.weight_decay),
    "adamw": lambda groups, v: torch.optim.AdamW(groups, lr=v.lr, weight_decay=v.weight_decay),
}


def check_param_groups(model: nn.Module, variant: VariantParams, key: str) -> None:
    """Raise :class:`ParamsError` naming ``<key>.param_groups.<name>`` for a layer the model lacks."""
    known = layer_names(model)
    for name in variant.param_groups:
        if name not in known:
            raise ParamsError(
                f"{key}.param_groups.{name}: model {variant.model.arch} has no layer {name!r}; "
                f"allowed: {', '.join(known)}"
            )


def build_optimizer(model: nn.Module, variant: VariantParams) -> torch.optim.Optimizer:
    """The variant's optimizer; ``param_groups`` layers get their own lr, the rest ``lr``."""
    grouped: list[dict] = []
    taken: set[int] = set()
    for name, lr in variant.param_groups.items():
        params = layer_parameters(model, name)
        taken.update(id(p) for p in params)
        grouped.append({"params": params, "lr": lr, "name": name})
    rest = [p for p in model.parameters() if id(p) not in taken]
    if rest:
        grouped.append({"params": rest, "name": "rest"})  # names the group's lr series (schedules.lr_names)
    return OPTIMIZERS[variant.optimizer](grouped, variant)
