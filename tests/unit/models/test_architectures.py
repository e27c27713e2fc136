"""The tutorials' networks: their state_dict keys, shapes and seeded weights, init schemes, saving.

The tutorial code below is copied from the seeds (000 §2.4.1-2.4.5, 004 §3.2 and §3.6) with only
the sizes made explicit, so "same seed, same weights" is checked against the source, not against
a second copy of our own builders.
"""

from __future__ import annotations

import math
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from bplab.data import catalog
from bplab.errors import ParamsError
from bplab.models.architectures import (
    MAX_PARAMETERS,
    build_model,
    initialize,
    layer_names,
    layer_parameters,
    linear_parameters,
)
from bplab.models.networks import BatchNet, LogisticRegression, ModuleNet, TestNet, TwoLayerNet
from bplab.models.safe_load import load_whole_model
from bplab.params.load import load_params
from bplab.params.schema import ModelSpec, VariantParams
from bplab.testing.scratch import REPO

PARAMS = load_params(REPO / "params.yaml")
VARIANTS = list(PARAMS.train)  # every variant params.yaml has, the tutorials' and any added since
# The tutorials' datasets' input and output widths (what their processed data gives the train stage).
TUTORIAL_WIDTHS = {"mnist": (784, 10), "boston": (13, 1), "flower": (2, 1)}
SCHEMES = ["normal", "uniform", "constant", "xavier", "kaiming"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def variant(name: str) -> VariantParams:
    return PARAMS.train[name]


def widths(dataset: str) -> tuple[int, int]:
    """(inputs, outputs) of a network for ``dataset``: the tutorials' own, else a few inputs and the
    outputs its task needs (one for a binary or a regression task, several classes otherwise)."""
    if dataset in TUTORIAL_WIDTHS:
        return TUTORIAL_WIDTHS[dataset]
    return 5, 3 if catalog.dataset(dataset).task == "multiclass" else 1


def build(name: str, seed: int | None = 0) -> nn.Module:
    """``build_model`` for variant ``name`` with its dataset's widths (after ``manual_seed(seed)``)."""
    if seed is not None:
        torch.manual_seed(seed)
    v = variant(name)
    return build_model(v.model, *widths(v.dataset))


# --- the tutorials' code ---------------------------------------------------------------------

class module_net(nn.Module):  # noqa: N801 - seed 000 §2.4.4, verbatim
    def __init__(self, num_input, num_hidden, num_output):
        super().__init__()
        self.layer1 = nn.Linear(num_input, num_hidden)

        self.layer2 = nn.Tanh()

        self.layer3 = nn.Linear(num_hidden, num_output)

    def forward(self, x):
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return x


class Batch_Net(nn.Module):  # noqa: N801 - seed 000 §2.4.5, verbatim
    def __init__(self, in_dim, n_hidden_1, n_hidden_2, out_dim):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(in_dim, n_hidden_1),
                                    nn.BatchNorm1d(n_hidden_1), nn.ReLU(True))
        self.layer2 = nn.Sequential(nn.Linear(n_hidden_1, n_hidden_2),
                                    nn.BatchNorm1d(n_hidden_2), nn.ReLU(True))
        self.layer3 = nn.Sequential(nn.Linear(n_hidden_2, out_dim))

    def forward(self, x):
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return x


class TutorialTestNet(nn.Module):  # seed 004 §3.2 ``TestNet``, verbatim but for the class name
    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(13, 10),
            nn.ReLU(),
        )
        self.regression = nn.Linear(10, 1)

    def forward(self, x):
        x = self.hidden(x)
        output = self.regression(x)
        return output


class MLPmodel(nn.Module):  # seed 004 §3.6, verbatim
    def __init__(self):
        super().__init__()
        self.hidden1 = nn.Linear(
            in_features=13,
            out_features=10,
            bias=True,
        )
        self.active1 = nn.ReLU()
        self.hidden2 = nn.Linear(10, 10)
        self.active2 = nn.ReLU()
        self.regression = nn.Linear(10, 1)

    def forward(self, x):
        x = self.hidden1(x)
        x = self.active1(x)
        x = self.hidden2(x)
        x = self.active2(x)
        output = self.regression(x)
        return output


class MLPmodel2(nn.Module):  # seed 004 §3.6, verbatim
    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(13, 10),
            nn.ReLU(),
            nn.Linear(10, 10),
            nn.ReLU(),
        )
        self.regression = nn.Linear(10, 1)

    def forward(self, x):
        x = self.hidden(x)
        output = self.regression(x)
        return output


def tutorial_logreg() -> dict[str, torch.Tensor]:
    """Seed 000 §2.4.1 logistic regression's parameters."""
    w = nn.Parameter(torch.randn(2, 1))
    b = nn.Parameter(torch.zeros(1))
    return {"w": w, "b": b}


def tutorial_two_network() -> dict[str, torch.Tensor]:
    """Seed 000 §2.4.1 two-layer network's parameters, drawn in the tutorial's order."""
    w1 = nn.Parameter(torch.randn(2, 4) * 0.01)
    b1 = nn.Parameter(torch.zeros(4))
    w2 = nn.Parameter(torch.randn(4, 1) * 0.01)
    b2 = nn.Parameter(torch.zeros(1))
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


TUTORIAL = {
    "flower_logreg": tutorial_logreg,
    "flower_twolayer": tutorial_two_network,
    "flower_sequential": lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)),  # §2.4.2
    "flower_module": lambda: module_net(2, 4, 1),
    "mnist_mlp": lambda: nn.Sequential(  # §2.4.5
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 200), nn.ReLU(),
        nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 10),
    ),
    "mnist_batchnet": lambda: Batch_Net(28 * 28, 300, 100, 10),
    "boston_module": MLPmodel,
    "boston_sequential": MLPmodel2,
    "boston_adam": TutorialTestNet,
}


def tutorial_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    built = TUTORIAL[name]()
    return built.state_dict() if isinstance(built, nn.Module) else {k: v.detach() for k, v in built.items()}


def bn(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,), f"{prefix}.running_mean": (width,),
            f"{prefix}.running_var": (width,), f"{prefix}.num_batches_tracked": ()}


def linear(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


EXPECTED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "flower_logreg": {"w": (2, 1), "b": (1,)},
    "flower_twolayer": {"w1": (2, 4), "b1": (4,), "w2": (4, 1), "b2": (1,)},
    "flower_sequential": linear("0", 2, 4) | linear("2", 4, 1),
    "flower_module": linear("layer1", 2, 4) | linear("layer3", 4, 1),
    "mnist_mlp": linear("0", 784, 400) | linear("2", 400, 200) | linear("4", 200, 100) | linear("6", 100, 10),
    "mnist_batchnet": (linear("layer1.0", 784, 300) | bn("layer1.1", 300) | linear("layer2.0", 300, 100)
                       | bn("layer2.1", 100) | linear("layer3.0", 100, 10)),
    "boston_module": linear("hidden1", 13, 10) | linear("hidden2", 10, 10) | linear("regression", 10, 1),
    "boston_sequential": linear("hidden.0", 13, 10) | linear("hidden.2", 10, 10) | linear("regression", 10, 1),
    "boston_adam": linear("hidden.0", 13, 10) | linear("regression", 10, 1),
}


def test_the_tutorials_variants_are_in_params_yaml() -> None:
    # The seed-fidelity tests below name the tutorials' variants; params.yaml may have more.
    assert set(TUTORIAL) == set(EXPECTED_SHAPES)
    assert set(EXPECTED_SHAPES) <= set(VARIANTS)


# --- structure -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXPECTED_SHAPES)
def test_state_dict_keys_and_shapes_are_the_tutorials(name: str) -> None:
    state = build(name).state_dict()
    assert list(state) == list(EXPECTED_SHAPES[name])  # same keys, in the tutorial's order
    assert {k: tuple(v.shape) for k, v in state.items()} == EXPECTED_SHAPES[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_gives_one_row_per_input_row(name: str) -> None:
    model = build(name)
    n_in, n_out = widths(variant(name).dataset)
    out = model(torch.randn(5, n_in))
    assert out.shape == (5, n_out)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_the_parameter_bound_counts_the_real_network(name: str) -> None:
    v = variant(name)
    n_in, n_out = widths(v.dataset)
    norms = 2 * sum(v.model.hidden) if v.model.arch == "batch_net" else 0  # BatchNorm1d's weight and bias
    real = sum(p.numel() for p in build(name).parameters())
    assert linear_parameters([n_in, *v.model.hidden, n_out]) + norms == real


def test_a_network_too_big_for_memory_is_refused_before_allocating() -> None:
    # Valid params (one hidden width, no layer between hidden widths), but with its inputs the
    # network has 6.6e13 parameters: without the check, torch's allocator refuses 262 TB.
    spec = ModelSpec(arch="mnist_net", hidden=[65536])
    with pytest.raises(ParamsError) as caught:
        build_model(spec, 10**9, 10, "train.wide.model")
    message = str(caught.value)
    assert message.startswith("train.wide.model.hidden: ") and "65,536,000,720,906 parameters" in message
    assert f"at most {MAX_PARAMETERS:,}" in message
    assert build_model(spec, 784, 10)  # a wide layer on MNIST's inputs (51 million parameters) is fine


# --- seed fidelity ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", TUTORIAL)
def test_a_seed_gives_the_tutorials_weights(name: str, seed: int) -> None:
    theirs = tutorial_state(name, seed)
    torch.manual_seed(seed)
    ours = build(name, seed=None).state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # A different seed gives different weights, so the equality above is not vacuous.
    other = tutorial_state(name, seed + 1)
    assert any(not torch.equal(ours[k], other[k]) for k in ours if ours[k].is_floating_point() and ours[k].std() > 0)


def test_twolayer_matches_the_tutorials_randn_times_scale() -> None:
    torch.manual_seed(3)
    w1 = torch.randn(2, 4) * 0.01
    b1 = torch.zeros(4)
    w2 = torch.randn(4, 1) * 0.01
    model = build("flower_twolayer", seed=3)
    assert torch.equal(model.w1.detach(), w1)
    assert torch.equal(model.b1.detach(), b1)
    assert torch.equal(model.w2.detach(), w2)
    assert torch.equal(model.b2.detach(), torch.zeros(1))
    assert 0 < model.w1.abs().max() < 0.1  # the * 0.01 scale was applied


@pytest.mark.parametrize("name", ["flower_sequential", "flower_module", "mnist_batchnet", "boston_module",
                                  "boston_sequential", "boston_adam"])
def test_tutorial_state_dicts_load_strictly_both_ways(name: str) -> None:
    torch.manual_seed(11)
    theirs = TUTORIAL[name]()
    ours = build(name, seed=11)
    x = torch.randn(5, widths(variant(name).dataset)[0])
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    # Loading needs identical keys and shapes in both directions (strict is the default).
    fresh_ours = build(name, seed=12)
    torch.manual_seed(12)
    fresh_theirs = TUTORIAL[name]()
    fresh_ours.load_state_dict(theirs.state_dict(), strict=True)
    fresh_theirs.load_state_dict(ours.state_dict(), strict=True)
    fresh_ours.eval()
    fresh_theirs.eval()
    with torch.no_grad():
        assert torch.equal(fresh_ours(x), theirs(x))
        assert torch.equal(fresh_theirs(x), ours(x))


# --- init schemes ----------------------------------------------------------------------------

def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def weight_bias(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight as (out, in), bias) of every layer, Linear or raw."""
    if isinstance(model, (LogisticRegression, TwoLayerNet)):
        return [(w.detach().T, b.detach()) for w, b in model.weight_bias_pairs()]
    return [(m.weight.detach(), m.bias.detach()) for m in linears(model)]


@pytest.mark.parametrize("name", VARIANTS)
def test_uniform_is_the_tutorials_init_weights(name: str) -> None:
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert initialize(model, "uniform") is model
    pairs = weight_bias(model)
    assert pairs
    for weight, bias in pairs:
        assert weight.min() >= -0.1 and weight.max() <= 0.1
        assert torch.all(bias == torch.tensor(0.01))
    after = model.state_dict()
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert changed  # something was re-drawn


def test_uniform_matches_the_tutorials_apply_with_the_same_seed() -> None:
    """Seed 004 §3.5: ``net.apply(init_weights)`` after ``manual_seed`` gives our weights exactly."""
    def init_weights(m):
        if type(m) == nn.Linear:  # noqa: E721 - the tutorial's check
            torch.nn.init.uniform_(m.weight, a=-0.1, b=0.1)
            m.bias.data.fill_(0.01)

    theirs = MLPmodel2()
    ours = build("boston_sequential")
    torch.manual_seed(13)
    theirs.apply(init_weights)
    torch.manual_seed(13)
    initialize(ours, "uniform")
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), key


def test_raw_flower_models_are_reinitialised_too() -> None:
    model = build("flower_twolayer")
    initialize(model, "uniform")
    assert model.w1.min() >= -0.1 and model.w1.max() <= 0.1
    assert model.w1.abs().max() > 0.02  # no longer the tutorial's randn * 0.01
    assert torch.all(model.b1 == 0.01) and torch.all(model.b2 == 0.01)
    logreg = build("flower_logreg")
    initialize(logreg, "constant")
    assert torch.all(logreg.w == 0.1) and torch.all(logreg.b == 0.1)
    assert logreg.w.requires_grad and isinstance(logreg.w, nn.Parameter)


def test_constant_sets_every_weight_to_one_tenth() -> None:
    for name in ("mnist_mlp", "boston_module", "flower_twolayer"):
        model = initialize(build(name), "constant")
        for weight, bias in weight_bias(model):
            assert torch.all(weight == 0.1), name
            assert torch.all(bias == 0.1), name


def test_normal_has_std_one_hundredth() -> None:
    model = initialize(build("mnist_mlp"), "normal")
    big = model[0].weight.detach()
    assert big.shape == (400, 784)
    assert big.std().item() == pytest.approx(0.01, rel=0.01)
    assert abs(big.mean().item()) < 1e-4
    for _, bias in weight_bias(model):
        assert torch.all(bias == 0)


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def kaiming_bound(fan_in: int) -> float:
    return math.sqrt(2.0) * math.sqrt(3.0 / fan_in)  # gain(relu) * sqrt(3 / fan_in)


@pytest.mark.parametrize("scheme", ["xavier", "kaiming"])
def test_xavier_and_kaiming_bounds_follow_fan_in_and_out(scheme: str) -> None:
    model = initialize(build("mnist_mlp"), scheme)
    for layer in linears(model):
        fan_out, fan_in = layer.weight.shape
        bound = xavier_bound(fan_in, fan_out) if scheme == "xavier" else kaiming_bound(fan_in)
        w = layer.weight.detach().abs()
        assert w.max() <= bound
        if w.numel() >= 10_000:  # a big layer actually reaches out to its bound
            assert w.max() >= 0.99 * bound
        assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("scheme", ["xavier", "kaiming"])
def test_raw_weights_use_in_as_fan_in(scheme: str) -> None:
    """Raw weights are (in, out): fan_in must be the first dimension, not the second."""
    spec = ModelSpec(arch="twolayer", hidden=[4])
    torch.manual_seed(0)
    model = initialize(build_model(spec, 400, 1), scheme)
    w1 = model.w1.detach()
    assert w1.shape == (400, 4)
    bound = xavier_bound(400, 4) if scheme == "xavier" else kaiming_bound(400)
    assert w1.abs().max() <= bound
    assert w1.abs().max() >= 0.95 * bound
    assert torch.all(model.b1 == 0)


def test_default_leaves_the_weights_alone() -> None:
    for name in VARIANTS:
        model = build(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert initialize(model, "default") is model
        for key, value in model.state_dict().items():
            assert torch.equal(before[key], value), (name, key)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_batchnorm_is_left_alone(scheme: str) -> None:
    model = initialize(build("mnist_batchnet"), scheme)
    assert isinstance(model, BatchNet)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 2
    for norm in norms:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        assert torch.all(norm.running_mean == 0) and torch.all(norm.running_var == 1)
        assert norm.num_batches_tracked.item() == 0


@pytest.mark.parametrize("name", ["flower_twolayer", "boston_adam"])
def test_unknown_scheme_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown init scheme 'glorot'"):
        initialize(build(name), "glorot")


# --- layer names -----------------------------------------------------------------------------

def test_layer_names_are_the_tutorials_attributes() -> None:
    assert layer_names(TestNet()) == ["hidden", "regression"]
    assert layer_names(build("boston_adam")) == ["hidden", "regression"]
    assert layer_names(build("boston_module")) == ["hidden1", "hidden2", "regression"]
    assert layer_names(build("flower_module")) == ["layer1", "layer3"]  # layer2 (Tanh) has no parameters
    assert layer_names(build("flower_sequential")) == ["0", "2"]
    assert layer_names(build("mnist_batchnet")) == ["layer1", "layer2", "layer3"]
    assert layer_names(build("flower_logreg")) == ["w", "b"]
    assert layer_names(build("flower_twolayer")) == ["w1", "b1", "w2", "b2"]


def test_layer_parameters_are_the_layers_own() -> None:
    net = build("boston_adam")
    assert [id(p) for p in layer_parameters(net, "hidden")] == [id(net.hidden[0].weight), id(net.hidden[0].bias)]
    assert [id(p) for p in layer_parameters(net, "regression")] == [id(net.regression.weight),
                                                                   id(net.regression.bias)]
    raw = build("flower_twolayer")
    assert [id(p) for p in layer_parameters(raw, "w1")] == [id(raw.w1)]
    mod = build("flower_module")
    assert isinstance(mod, ModuleNet)
    assert [id(p) for p in layer_parameters(mod, "layer3")] == [id(mod.layer3.weight), id(mod.layer3.bias)]


# --- saving and loading ----------------------------------------------------------------------

def trained_looking(name: str, seed: int = 0) -> nn.Module:
    """A model in eval mode; batch_net first sees a few batches so its running stats are not 0/1."""
    model = build(name, seed)
    if isinstance(model, BatchNet):
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 784) * 2 + 1)
        assert model.layer1[1].num_batches_tracked.item() == 3
    return model.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_whole_model_pickle_round_trips(name: str, tmp_path: Path) -> None:
    model = trained_looking(name)
    x = torch.randn(5, widths(variant(name).dataset)[0])
    path = tmp_path / "model.pt"
    torch.save(model, path)  # what the train stage writes to models/<variant>/model.pt
    loaded = load_whole_model(path)  # weights_only=True with the allowlist of the project's classes
    assert type(loaded) is type(model)
    assert loaded is not model
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_round_trips_into_a_fresh_model(name: str, tmp_path: Path) -> None:
    model = trained_looking(name, seed=0)
    x = torch.randn(5, widths(variant(name).dataset)[0])
    path = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), path)
    fresh = build(name, seed=99).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))  # really different weights before loading
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


class _Payload:
    """Unpickling this runs a shell command: what a tampered state_dict.pt could carry."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


def test_tampered_state_dict_is_refused_by_weights_only_load(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = build("boston_adam").state_dict()
    state["regression.extra"] = _Payload(marker)
    path = tmp_path / "state_dict.pt"
    torch.save(state, path)
    assert not marker.exists()

    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()

    # The payload is real: the unsafe loader does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()
