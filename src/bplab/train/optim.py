"""Optimizers from a variant's params, including per-layer learning rates (seed 004 §3.2)."""

from __future__ import annotations

import torch
from torch import nn

from bplab.errors import ParamsError
from bplab.models.architectures import layer_names, layer_parameters
from bplab.params.optimizers import OPTIMIZERS
from bplab.params.schema import VariantParams


def _check_param_groups(model: nn.Module, variant: VariantParams, key: str) -> None:
    known = layer_names(model)
    for name in variant.param_groups:
        if name not in known:
            raise ParamsError(
                f"{key}.param_groups.{name}: model {variant.model.arch} has no layer {name!r}; "
                f"allowed: {', '.join(known)}"
            )


def build_optimizer(model: nn.Module, variant: VariantParams, key: str) -> torch.optim.Optimizer:
    """The variant's optimizer; ``param_groups`` layers get their own lr, the rest ``lr``. A
    ``param_groups`` layer the model lacks is a :class:`ParamsError` naming ``<key>.param_groups.<layer>``."""
    _check_param_groups(model, variant, key)
    grouped: list[dict] = []
    taken: set[int] = set()
    for name, lr in variant.param_groups.items():
        params = layer_parameters(model, name)
        taken.update(id(p) for p in params)
        grouped.append({"params": params, "lr": lr, "name": name})
    rest = [p for p in model.parameters() if id(p) not in taken]
    if rest:
        grouped.append({"params": rest, "name": "rest"})  # names the group's lr series (schedules.lr_names)
    kind = OPTIMIZERS[variant.optimizer]
    momentum = {"momentum": variant.momentum} if kind.momentum else {}
    return getattr(torch.optim, kind.torch_class)(grouped, lr=variant.lr, weight_decay=variant.weight_decay, **momentum)
