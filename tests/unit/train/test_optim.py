"""Optimizers from params, including seed 004 §3.2's per-layer Adam learning rates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.optim import Adam

from bplab.errors import ParamsError
from bplab.models.architectures import build_model
from bplab.params.load import load_params
from bplab.params.optimizers import OPTIMIZERS
from bplab.params.schema import VariantParams
from bplab.testing.scratch import REPO
from bplab.train.optim import build_optimizer

PARAMS = load_params(REPO / "params.yaml")
WIDTHS = {"mnist": (784, 10), "boston": (13, 1), "flower": (2, 1)}  # the tutorials' datasets


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_for(v: VariantParams, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(v.model, *WIDTHS.get(v.dataset, (5, 3)))  # layer names do not depend on the widths


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_boston_adam_gives_the_tutorials_per_layer_learning_rates() -> None:
    v = PARAMS.train["boston_adam"]
    testnet = model_for(v)
    optimizer = build_optimizer(testnet, v, "train.test")
    assert type(optimizer) is Adam
    groups = optimizer.param_groups
    assert len(groups) == 2  # hidden and regression cover every parameter: no default group
    assert ids(groups[0]["params"]) == ids(testnet.hidden.parameters())
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert ids(groups[1]["params"]) == ids(testnet.regression.parameters())
    assert groups[1]["lr"] == pytest.approx(1e-2)
    assert optimizer.defaults["lr"] == pytest.approx(1e-2)

    tutorial = Adam(
        [{"params": testnet.hidden.parameters(), "lr": 0.0001},
         {"params": testnet.regression.parameters(), "lr": 0.01}],
        lr=1e-2)
    for ours, theirs in zip(groups, tutorial.param_groups, strict=True):
        # Ours also carry a "name": it labels the group's lr series (lr/hidden, ...).
        assert {k: v for k, v in ours.items() if k not in {"params", "name"}} == {
            k: v for k, v in theirs.items() if k != "params"}


@pytest.mark.parametrize("steps", [1, 3])
def test_boston_adam_steps_like_the_tutorials_optimizer(steps: int) -> None:
    v = PARAMS.train["boston_adam"]
    ours, theirs = model_for(v, seed=5), model_for(v, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    ours_opt = build_optimizer(ours, v, "train.test")
    theirs_opt = Adam(
        [{"params": theirs.hidden.parameters(), "lr": 0.0001},
         {"params": theirs.regression.parameters(), "lr": 0.01}],
        lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 13, generator=g), torch.randn(32, 1, generator=g)
    initial = [p.detach().clone() for p in ours.parameters()]
    for model, opt in ((ours, ours_opt), (theirs, theirs_opt)):
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    for (name, a), b, start in zip(ours.named_parameters(), theirs.parameters(), initial):
        assert torch.equal(a, b), name
        assert not torch.equal(a, start), name  # the step did move every parameter
    # The per-layer rates took effect: Adam's first step moves each weight by about its lr.
    if steps == 1:
        assert (ours.hidden[0].weight - initial[0]).abs().max().item() == pytest.approx(1e-4, rel=1e-2)
        assert (ours.regression.weight - initial[2]).abs().max().item() == pytest.approx(1e-2, rel=1e-2)


def test_sgd_uses_lr_from_params() -> None:
    v = PARAMS.train["mnist_mlp"]
    model = model_for(v)
    optimizer = build_optimizer(model, v, "train.test")
    assert type(optimizer) is torch.optim.SGD
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.1)
    assert group["momentum"] == 0 and group["weight_decay"] == 0
    assert ids(group["params"]) == ids(model.parameters())


def test_sgd_on_raw_parameters_covers_all_of_them() -> None:
    v = PARAMS.train["flower_twolayer"]
    model = model_for(v)
    optimizer = build_optimizer(model, v, "train.test")
    assert set(ids(optimizer.param_groups[0]["params"])) == {id(model.w1), id(model.b1), id(model.w2), id(model.b2)}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


def test_sgd_momentum_and_weight_decay_pass_through() -> None:
    v = PARAMS.train["boston_module"].model_copy(update={"momentum": 0.9, "weight_decay": 1e-3, "lr": 0.05})
    optimizer = build_optimizer(model_for(v), v, "train.test")
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 1e-3)


@pytest.mark.parametrize(("name", "kind"), [("rmsprop", torch.optim.RMSprop), ("adamw", torch.optim.AdamW)])
def test_rmsprop_and_adamw_build(name: str, kind: type) -> None:
    v = PARAMS.train["boston_sequential"].model_copy(
        update={"optimizer": name, "lr": 0.003, "momentum": 0.5, "weight_decay": 0.02})
    model = model_for(v)
    optimizer = build_optimizer(model, v, "train.test")
    assert type(optimizer) is kind
    (group,) = optimizer.param_groups
    assert group["lr"] == pytest.approx(0.003)
    assert group["weight_decay"] == pytest.approx(0.02)
    if name == "rmsprop":
        assert group["momentum"] == pytest.approx(0.5)
    assert ids(group["params"]) == ids(model.parameters())
    # And it can take a step.
    F.mse_loss(model(torch.randn(4, 13)), torch.randn(4, 1)).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unnamed_parameters_fall_into_a_default_group_with_lr() -> None:
    v = PARAMS.train["boston_adam"].model_copy(update={"param_groups": {"hidden": 1e-4}, "lr": 3e-3})
    model = model_for(v)
    optimizer = build_optimizer(model, v, "train.test")
    first, rest = optimizer.param_groups
    assert ids(first["params"]) == ids(model.hidden.parameters()) and first["lr"] == pytest.approx(1e-4)
    assert ids(rest["params"]) == ids(model.regression.parameters()) and rest["lr"] == pytest.approx(3e-3)


def test_param_groups_on_raw_parameters_and_numbered_layers() -> None:
    raw = PARAMS.train["flower_twolayer"].model_copy(update={"param_groups": {"w2": 0.5}})
    model = model_for(raw)
    first, rest = build_optimizer(model, raw, "train.flower_twolayer").param_groups
    assert ids(first["params"]) == [id(model.w2)] and first["lr"] == 0.5
    assert set(ids(rest["params"])) == {id(model.w1), id(model.b1), id(model.b2)} and rest["lr"] == 1.0

    seq = PARAMS.train["flower_sequential"].model_copy(update={"param_groups": {"2": 0.25}})
    model = model_for(seq)
    first, rest = build_optimizer(model, seq, "train.flower_sequential").param_groups
    assert ids(first["params"]) == ids(model[2].parameters()) and first["lr"] == 0.25
    assert ids(rest["params"]) == ids(model[0].parameters())


def test_unknown_param_group_layer_is_a_params_error_naming_the_key() -> None:
    v = PARAMS.train["boston_adam"].model_copy(update={"param_groups": {"hiddn": 1e-4, "regression": 1e-2}})
    with pytest.raises(ParamsError) as caught:
        build_optimizer(model_for(v), v, "train.boston_adam")
    message = str(caught.value)
    assert message.startswith("train.boston_adam.param_groups.hiddn:")
    assert "allowed: hidden, regression" in message


def test_repository_param_groups_are_valid() -> None:
    for name, v in PARAMS.train.items():
        build_optimizer(model_for(v), v, f"train.{name}")  # raises if any names a missing layer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_params_yaml_accepts_builds_its_torch_class(name: str) -> None:
    import inspect

    kind = OPTIMIZERS[name]
    v = VariantParams.model_validate(PARAMS.train["boston_sequential"].model_dump() | {"optimizer": name})
    optimizer = build_optimizer(model_for(v), v, "train.test")
    assert type(optimizer) is getattr(torch.optim, kind.torch_class)
    # The table's momentum flag is what torch's class takes, so config refuses exactly the momentum torch would.
    assert ("momentum" in inspect.signature(type(optimizer)).parameters) == kind.momentum
