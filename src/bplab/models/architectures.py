"""Which network each ``model.arch`` builds, and how networks are initialised.

:data:`ARCHITECTURES` is the one table of architectures: config validation reads the names and
the number of hidden widths each takes, ``build_model`` the builder. This module imports no torch
when it is imported (the data stages validate params.yaml without paying for torch); the networks
themselves are in :mod:`bplab.models.networks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

class ModelSpec(Protocol):
    """What building a network reads of ``train.<variant>.model`` (:class:`bplab.params.schema.ModelSpec`,
    which validates against :data:`ARCHITECTURES`: the params import this table, not the reverse)."""

    arch: str
    hidden: list[int]
    init_scale: float


# The most parameters a network may have: 2**30 float32 weights take 4 GiB, and training holds as
# much again for their gradients and twice that for Adam's moments (16 GiB in all). Widths beyond
# what fits would fail in the allocator, after the stage has opened its MLflow run.
MAX_PARAMETERS = 2**30
TOO_MANY = (f"at most {MAX_PARAMETERS:,} (2**30: 4 GiB of float32 weights, 16 GiB with their gradients "
            "and Adam's moments)")


@dataclass(frozen=True)
class Architecture:
    """How to build one network of the tutorials, and how many hidden widths it takes."""

    build: Callable[[ModuleType, int, ModelSpec, int], nn.Module]  # (bplab.models.networks, inputs, spec, outputs)
    least_hidden: int
    most_hidden: int | None  # None: no upper bound


ARCHITECTURES: dict[str, Architecture] = {
    "logreg": Architecture(lambda nets, n_in, spec, n_out: nets.LogisticRegression(n_in, n_out), 0, 0),
    "twolayer": Architecture(
        lambda nets, n_in, spec, n_out: nets.TwoLayerNet(n_in, spec.hidden[0], n_out, spec.init_scale), 1, 1),
    "seq_net": Architecture(
        lambda nets, n_in, spec, n_out: nets.seq_net(n_in, spec.hidden, n_out, nets.nn.Tanh), 1, None),
    "module_net": Architecture(lambda nets, n_in, spec, n_out: nets.ModuleNet(n_in, spec.hidden[0], n_out), 1, 1),
    "mnist_net": Architecture(
        lambda nets, n_in, spec, n_out: nets.seq_net(n_in, spec.hidden, n_out, nets.nn.ReLU), 1, None),
    "batch_net": Architecture(
        lambda nets, n_in, spec, n_out: nets.BatchNet(n_in, spec.hidden[0], spec.hidden[1], n_out), 2, 2),
    "mlp_model": Architecture(
        lambda nets, n_in, spec, n_out: nets.MLPModel(n_in, spec.hidden[0], spec.hidden[1], n_out), 2, 2),
    "mlp_model2": Architecture(
        lambda nets, n_in, spec, n_out: nets.MLPModel2(n_in, tuple(spec.hidden), n_out), 1, None),
    "test_net": Architecture(lambda nets, n_in, spec, n_out: nets.TestNet(n_in, spec.hidden[0], n_out), 1, 1),
}


def linear_parameters(widths: Sequence[int]) -> int:
    """The weights and biases of a chain of Linear layers through ``widths``: every network here
    is one, from its inputs through ``model.hidden`` to its outputs (batch_net's norms add 2 per
    hidden unit to that)."""
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def build_model(spec: ModelSpec, n_in: int, n_out: int, key: str = "model") -> nn.Module:
    """A freshly initialised network for ``spec`` (draws from torch's global RNG: seed it first).

    Raises :class:`ParamsError` naming ``<key>.hidden`` before allocating a network of over
    :data:`MAX_PARAMETERS`: params validation bounds the hidden layers alone, the input and
    output widths are only known here, from the data.
    """
    from bplab.errors import ParamsError
    from bplab.models import networks

    count = linear_parameters([n_in, *spec.hidden, n_out])
    if count > MAX_PARAMETERS:
        raise ParamsError(f"{key}.hidden: {spec.arch} from {n_in} inputs through {spec.hidden} to {n_out} "
                          f"outputs has {count:,} parameters; {TOO_MANY}")
    return ARCHITECTURES[spec.arch].build(networks, n_in, spec, n_out)


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
    from torch import nn

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
    import torch
    from torch import nn

    def visit(module: nn.Module) -> None:
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                _init_pair(module.weight, module.bias, scheme)
            elif hasattr(module, "weight_bias_pairs"):
                for weight, bias in module.weight_bias_pairs():
                    _init_pair(weight.T, bias, scheme)  # raw weights are (in, out)

    return model.apply(visit)
