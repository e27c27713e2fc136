"""The tutorials' networks, with their submodule and parameter names, so state_dict keys match.

``build_model`` maps a variant's ``model.arch`` to its builder; input and output widths come from
the data (784 -> 10 for MNIST, 13 -> 1 for Boston, 2 -> 1 for the flower).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bplab.config import ModelSpec
from bplab.errors import ModelFileError
from bplab.safe_load import load_without_code


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


_BUILDERS: dict[str, Callable[[int, ModelSpec, int], nn.Module]] = {
    "logreg": lambda n_in, spec, n_out: LogisticRegression(n_in, n_out),
    "twolayer": lambda n_in, spec, n_out: TwoLayerNet(n_in, spec.hidden[0], n_out, spec.init_scale),
    "seq_net": lambda n_in, spec, n_out: seq_net(n_in, spec.hidden, n_out, nn.Tanh),
    "module_net": lambda n_in, spec, n_out: ModuleNet(n_in, spec.hidden[0], n_out),
    "mnist_net": lambda n_in, spec, n_out: seq_net(n_in, spec.hidden, n_out, nn.ReLU),
    "batch_net": lambda n_in, spec, n_out: BatchNet(n_in, spec.hidden[0], spec.hidden[1], n_out),
    "mlp_model": lambda n_in, spec, n_out: MLPModel(n_in, spec.hidden[0], spec.hidden[1], n_out),
    "mlp_model2": lambda n_in, spec, n_out: MLPModel2(n_in, tuple(spec.hidden), n_out),
    "test_net": lambda n_in, spec, n_out: TestNet(n_in, spec.hidden[0], n_out),
}


def build_model(spec: ModelSpec, n_in: int, n_out: int) -> nn.Module:
    """A freshly initialised network for ``spec`` (draws from torch's global RNG: seed it first)."""
    return _BUILDERS[spec.arch](n_in, spec, n_out)


# Every class a whole model pickled by ``torch.save(model)`` may name: this module's networks and
# the torch.nn layers they are built from. ``torch.load(weights_only=True)`` rebuilds these (and
# tensors, numbers, strings, containers) and refuses any other global, so a tampered file cannot
# run code. A new architecture that uses another layer type must add it here (a test checks).
WHOLE_MODEL_CLASSES: tuple[type[nn.Module], ...] = (
    LogisticRegression, TwoLayerNet, ModuleNet, BatchNet, MLPModel, MLPModel2, TestNet,
    nn.Sequential, nn.Linear, nn.Tanh, nn.ReLU, nn.BatchNorm1d,
)


def load_whole_model(path: Path) -> nn.Module:
    """The whole model that ``torch.save(model)`` wrote to ``path``, on the CPU, in eval mode.

    Loaded with ``weights_only=True`` and :data:`WHOLE_MODEL_CLASSES` as the only allowed classes:
    nothing in the file can run code. Raises :class:`ModelFileError` naming the file when it is
    missing, refused or not a model.
    """
    model = load_without_code(path, "a model built from this project's classes", WHOLE_MODEL_CLASSES)
    if not isinstance(model, WHOLE_MODEL_CLASSES):
        raise ModelFileError(f"{path}: refused: holds a {type(model).__name__}, not one of this project's models")
    return model.eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict that ``torch.save(model.state_dict())`` wrote to ``path``, on the CPU.

    Tensors and containers only (``weights_only=True``); raises :class:`ModelFileError` naming the
    file when it is missing, refused or not a mapping of names to tensors.
    """
    state = load_without_code(path, "a plain state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: refused: not a mapping of parameter names to tensors")
    return state


def layer_names(model: nn.Module) -> list[str]:
    """Names a ``param_groups`` entry may use: top-level submodules with parameters, raw parameters."""
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    return children + [name for name, _ in model.named_parameters(recurse=False)]


def layer_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of top-level layer (or raw parameter) ``name``."""
    own = dict(model.named_parameters(recurse=False))
    return [own[name]] if name in own else list(model.get_submodule(name).parameters())


def _init_pair(weight: torch.Tensor, bias: torch.Tensor | None, scheme: str) -> None:
    """Re-initialise one layer; ``weight`` is (out, in) as in ``nn.Linear``."""
    if scheme == "normal":
        nn.init.normal_(weight, mean=0.0, std=0.01)
        bias_value = 0.0
    elif scheme == "uniform":  # seed 004 §3.5 init_weights: U(-0.1, 0.1) weights, bias 0.01
        nn.init.uniform_(weight, a=-0.1, b=0.1)
        bias_value = 0.01
    elif scheme == "constant":  # every unit starts equal: the symmetry the tutorial warns about
        nn.init.constant_(weight, 0.1)
        bias_value = 0.1
    elif scheme == "xavier":
        nn.init.xavier_uniform_(weight)
        bias_value = 0.0
    elif scheme == "kaiming":
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
        bias_value = 0.0
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")
    if bias is not None:
        nn.init.constant_(bias, bias_value)


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Apply init ``scheme`` to every Linear layer with ``Module.apply`` (``default`` keeps PyTorch's).

    Schemes: ``normal`` N(0, 0.01^2), ``uniform`` U(-0.1, 0.1) with bias 0.01 (seed 004 §3.5),
    ``constant`` 0.1, ``xavier`` (Glorot uniform), ``kaiming`` (He uniform, ReLU gain); biases 0
    unless stated. Raw-parameter models (the flower's hand-built nets) get the same on their
    ``(w, b)`` pairs.
    """
    if scheme == "default":
        return model

    def visit(module: nn.Module) -> None:
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                _init_pair(module.weight, module.bias, scheme)
            elif hasattr(module, "weight_bias_pairs"):
                for weight, bias in module.weight_bias_pairs():
                    _init_pair(weight.T, bias, scheme)  # raw weights are (in, out)

    return model.apply(visit)
