"""The tutorials' networks, with their submodule and parameter names, so state_dict keys match.

Seed 000 (§2.4.1-2.4.5) and seed 004 (§3.2, §3.6) build these; :mod:`bplab.models.architectures` says which
``model.arch`` builds which, and how to initialise, save and load them.
"""

from __future__ import annotations

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Seed 000 §2.4.1 ``logistic_regression``: raw parameters ``w`` (in x 1) and ``b``; x @ w + b."""

    def __init__(self, n_in: int, n_out: int = 1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, self.w) + self.b

    def weight_bias_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """The (weight, bias) pairs an init scheme re-initialises; weights are (in, out)."""
        return [(self.w, self.b)]


class TwoLayerNet(nn.Module):
    """Seed 000 §2.4.1 ``two_network``: raw ``w1`` (in x h) * scale, ``b1``, tanh, ``w2`` * scale, ``b2``."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int = 1, init_scale: float = 0.01) -> None:
        super().__init__()
        # Drawn in the tutorial's order (w1, b1, w2, b2) so a seed gives the tutorial's weights.
        self.w1 = nn.Parameter(torch.randn(n_in, n_hidden) * init_scale)
        self.b1 = nn.Parameter(torch.zeros(n_hidden))
        self.w2 = nn.Parameter(torch.randn(n_hidden, n_out) * init_scale)
        self.b2 = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(torch.mm(x, self.w1) + self.b1)
        return torch.mm(hidden, self.w2) + self.b2

    def weight_bias_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """The (weight, bias) pairs an init scheme re-initialises; weights are (in, out)."""
        return [(self.w1, self.b1), (self.w2, self.b2)]


def seq_net(n_in: int, hidden: list[int], n_out: int, activation: type[nn.Module]) -> nn.Sequential:
    """Seed 000 §2.4.2 / §2.4.5: ``nn.Sequential`` of Linear layers with an activation between them."""
    widths = [n_in, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(widths[-1], n_out))
    return nn.Sequential(*layers)


class ModuleNet(nn.Module):
    """Seed 000 §2.4.4 ``module_net``: ``layer1`` Linear, ``layer2`` Tanh, ``layer3`` Linear."""

    def __init__(self, num_input: int, num_hidden: int, num_output: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(num_input, num_hidden)
        self.layer2 = nn.Tanh()
        self.layer3 = nn.Linear(num_hidden, num_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(x)))


class BatchNet(nn.Module):
    """Seed 000 §2.4.5 ``Batch_Net``: ``layer1``/``layer2`` = Linear + BatchNorm1d + ReLU, ``layer3`` Linear."""

    def __init__(self, in_dim: int, n_hidden_1: int, n_hidden_2: int, out_dim: int) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(in_dim, n_hidden_1), nn.BatchNorm1d(n_hidden_1), nn.ReLU(True))
        self.layer2 = nn.Sequential(nn.Linear(n_hidden_1, n_hidden_2), nn.BatchNorm1d(n_hidden_2), nn.ReLU(True))
        self.layer3 = nn.Sequential(nn.Linear(n_hidden_2, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(x)))


class MLPModel(nn.Module):
    """Seed 004 §3.6 ``MLPmodel``: ``hidden1``, ``active1``, ``hidden2``, ``active2``, ``regression``."""

    def __init__(self, n_in: int = 13, n_hidden_1: int = 10, n_hidden_2: int = 10, n_out: int = 1) -> None:
        super().__init__()
        self.hidden1 = nn.Linear(n_in, n_hidden_1)
        self.active1 = nn.ReLU()
        self.hidden2 = nn.Linear(n_hidden_1, n_hidden_2)
        self.active2 = nn.ReLU()
        self.regression = nn.Linear(n_hidden_2, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.active1(self.hidden1(x))
        x = self.active2(self.hidden2(x))
        return self.regression(x)


class MLPModel2(nn.Module):
    """Seed 004 §3.6 ``MLPmodel2``: ``hidden`` = Sequential(Linear, ReLU, ...), ``regression`` Linear."""

    def __init__(self, n_in: int = 13, hidden: tuple[int, ...] = (10, 10), n_out: int = 1) -> None:
        super().__init__()
        widths = [n_in, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.hidden = nn.Sequential(*layers)
        self.regression = nn.Linear(widths[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regression(self.hidden(x))


class TestNet(MLPModel2):
    """Seed 004 §3.2 ``TestNet``: ``hidden`` = Sequential(Linear(13, 10), ReLU), ``regression``."""

    __test__ = False  # not a pytest test class, despite the tutorial's name

    def __init__(self, n_in: int = 13, n_hidden: int = 10, n_out: int = 1) -> None:
        super().__init__(n_in, (n_hidden,), n_out)


# Every class a whole model pickled by ``torch.save(model)`` may name: the networks above and the
# torch.nn layers they are built from. ``torch.load(weights_only=True)`` rebuilds these (and
# tensors, numbers, strings, containers) and refuses any other global, so a tampered file cannot
# run code. A new architecture that uses another layer type must add it here (a test checks).
WHOLE_MODEL_CLASSES: tuple[type[nn.Module], ...] = (
    LogisticRegression, TwoLayerNet, ModuleNet, BatchNet, MLPModel, MLPModel2, TestNet,
    nn.Sequential, nn.Linear, nn.Tanh, nn.ReLU, nn.BatchNorm1d,
)
