"""Tiny learnable data and a model, optimizer and generator built as the train stage builds them."""

from __future__ import annotations

import torch

from bplab.data import catalog, flower
from bplab.models.architectures import build_model, initialize
from bplab.params.schema import VariantParams
from bplab.train.loop import Task
from bplab.train.optim import build_optimizer


def make_data(dataset: str, n: int | None = None, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny learnable data in the processed splits' layout (float32 x; int64 ids or float32 column y)."""
    g = torch.Generator().manual_seed(seed)
    if dataset == "mnist":
        n = n or 256
        x = torch.randn(n, 784, generator=g)
        y = (x @ torch.randn(784, 10, generator=g)).argmax(dim=1)  # labels a linear map can learn
        return x, y
    if dataset == "boston":
        n = n or 128
        x = torch.randn(n, 13, generator=g)
        y = x @ torch.randn(13, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        return x, y.float()
    if dataset == "flower":
        x, y = flower.generate(n or 400, 4, 0.2, seed)
        return torch.from_numpy(x).float(), torch.from_numpy(y).float()
    return _data_of_its_task(catalog.dataset(dataset).task, n or 256, g)


def _data_of_its_task(kind: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset added since the tutorials: a few features and targets a linear map can learn."""
    x = torch.randn(n, 5, generator=g)
    if kind == "multiclass":
        return x, (x @ torch.randn(5, 3, generator=g)).argmax(dim=1)
    score = x @ torch.randn(5, 1, generator=g)
    return x, (score > 0).float() if kind == "binary" else score + 0.1 * torch.randn(n, 1, generator=g)


def setup(v: VariantParams, seed: int, n_in: int):
    """Model, optimizer and generator exactly as the train stage builds them."""
    task = Task(catalog.dataset(v.dataset).task)
    n_out = 10 if task.kind == "multiclass" else 1
    torch.manual_seed(seed)
    model = initialize(build_model(v.model, n_in, n_out), v.init)
    optimizer = build_optimizer(model, v, "train.test")
    generator = torch.Generator().manual_seed(seed)
    return model, optimizer, task, generator
