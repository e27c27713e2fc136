"""The training loop: it learns on every variant, reports each epoch once, is deterministic, stops on NaN."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bplab.models.architectures import build_model
from bplab.params.load import load_params
from bplab.params.schema import VariantParams
from bplab.testing.scratch import REPO
from bplab.train.loop import (
    BatchSizeError,
    EpochPlan,
    EpochRecord,
    TrainingDiverged,
    evaluate_sums,
    fit,
)
from support.training import make_data, setup

PARAMS = load_params(REPO / "params.yaml")
VARIANTS = list(PARAMS.train)

# Epochs per dataset for the "loss goes down" check: enough steps to see it, well under a second each.
# Boston keeps its tutorial lr of 0.001: with n = batch_size = 128 that is one SGD step per epoch,
# and 300 of them lower the loss clearly, so no lr override is needed.
EPOCHS = {"mnist": 10, "boston": 300, "flower": 100}
ADDED_DATASET_EPOCHS = 100  # a dataset added since the tutorials, on make_data's small learnable data


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_fit(v: VariantParams, train, test=None, *, seed: int = 0, epochs: int | None = None,
            batch_size: int | None | str = "params", first_epoch: int = 1, report_every_s: float = 1.0):
    """Train per ``v``; returns (model, list of on_epochs calls)."""
    model, optimizer, task, generator = setup(v, seed, train[0].shape[1])
    schedule = EpochPlan(epochs or v.epochs, v.batch_size if batch_size == "params" else batch_size,
                        v.eval_batch_size, v.shuffle)
    calls: list[list[EpochRecord]] = []
    fit(model, optimizer, task, train, test or train, schedule, generator, calls.append,
        first_epoch=first_epoch, report_every_s=report_every_s)
    return model, calls


def flat(calls: list[list[EpochRecord]]) -> list[EpochRecord]:
    return [r for call in calls for r in call]


def without_time(records: list[EpochRecord]) -> list[EpochRecord]:
    return [dataclasses.replace(r, seconds=0.0) for r in records]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_learns(name: str) -> None:
    v = PARAMS.train[name]
    x, y = make_data(v.dataset)
    test = make_data(v.dataset, seed=99)
    model, optimizer, task, generator = setup(v, 0, x.shape[1])
    fixed = (x[:64], y[:64])
    before = evaluate_sums(model, task, *fixed, None)[0].item()
    epochs = EPOCHS.get(v.dataset, ADDED_DATASET_EPOCHS)
    calls: list[list[EpochRecord]] = []
    fit(model, optimizer, task, (x, y), test, EpochPlan(epochs, v.batch_size, v.eval_batch_size, v.shuffle),
        generator, calls.append)
    after = evaluate_sums(model, task, *fixed, None)[0].item()
    assert after < 0.97 * before, (before, after)
    records = flat(calls)
    assert [r.epoch for r in records] == list(range(1, epochs + 1))
    assert records[-1].metrics["train_loss"] < records[0].metrics["train_loss"]
    steps = math.ceil(len(x) / (v.batch_size or len(x)))
    assert all(len(r.step_losses) == steps for r in records)
    for r in records:
        if task.kind == "regression":
            assert "train_acc" not in r.metrics and "val_acc" not in r.metrics
        else:
            assert 0.0 <= r.metrics["train_acc"] <= 1.0 and 0.0 <= r.metrics["val_acc"] <= 1.0
        assert math.isfinite(r.metrics["train_loss"]) and math.isfinite(r.metrics["val_loss"]) and r.seconds >= 0


def test_records_cover_each_epoch_once_with_partial_last_batch() -> None:
    v = PARAMS.train["mnist_mlp"]  # batch_size 64
    x, y = make_data("mnist", n=150)  # 64 + 64 + 22
    _, calls = run_fit(v, (x, y), epochs=3)
    records = flat(calls)
    assert [r.epoch for r in records] == [1, 2, 3]
    assert all(len(r.step_losses) == 3 for r in records)
    # train_loss is the row-weighted mean of the step losses (the last batch has 22 rows).
    for r in records:
        weighted = (64 * r.step_losses[0] + 64 * r.step_losses[1] + 22 * r.step_losses[2]) / 150
        assert r.metrics["train_loss"] == pytest.approx(weighted, rel=1e-6)


def test_full_batch_has_one_step_per_epoch() -> None:
    v = PARAMS.train["flower_logreg"]
    x, y = make_data("flower")
    _, calls = run_fit(v, (x, y), epochs=4, report_every_s=0)
    records = flat(calls)
    assert [len(r.step_losses) for r in records] == [1, 1, 1, 1]
    for r in records:
        assert r.metrics["train_loss"] == pytest.approx(r.step_losses[0], rel=1e-6)
        assert 0.0 <= r.metrics["train_acc"] <= 1.0


def test_regression_has_no_accuracy() -> None:
    v = PARAMS.train["boston_adam"]
    x, y = make_data("boston")
    _, calls = run_fit(v, (x, y), epochs=2, batch_size=50)
    for r in flat(calls):
        assert "train_acc" not in r.metrics and "val_acc" not in r.metrics
        assert len(r.step_losses) == 3  # ceil(128 / 50)


def test_report_every_zero_reports_each_epoch_on_its_own() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    _, calls = run_fit(v, (x, y), epochs=5, report_every_s=0)
    assert [[r.epoch for r in call] for call in calls] == [[1], [2], [3], [4], [5]]


def test_a_long_report_interval_reports_everything_at_the_end() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    _, calls = run_fit(v, (x, y), epochs=5, report_every_s=3600)
    assert [[r.epoch for r in call] for call in calls] == [[1, 2, 3, 4, 5]]


def test_first_epoch_resumes_at_that_epoch() -> None:
    v = PARAMS.train["flower_module"]
    x, y = make_data("flower")
    _, calls = run_fit(v, (x, y), epochs=6, first_epoch=3, report_every_s=0)
    assert [r.epoch for r in flat(calls)] == [3, 4, 5, 6]
    assert len(calls) == 4


@pytest.mark.parametrize("name", ["mnist_batchnet", "boston_adam"])
def test_same_seed_same_results_different_seed_different(name: str) -> None:
    v = PARAMS.train[name]
    x, y = make_data(v.dataset, n=200)
    # Mini-batches smaller than the split, so the shuffling generator matters too.
    first, calls_a = run_fit(v, (x, y), seed=3, epochs=3, batch_size=32)
    second, calls_b = run_fit(v, (x, y), seed=3, epochs=3, batch_size=32)
    assert without_time(flat(calls_a)) == without_time(flat(calls_b))  # exact float equality
    state_a, state_b = first.state_dict(), second.state_dict()
    assert list(state_a) == list(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    other, calls_c = run_fit(v, (x, y), seed=4, epochs=3, batch_size=32)
    assert without_time(flat(calls_c)) != without_time(flat(calls_a))
    assert not torch.equal(other.state_dict()["regression.weight" if "boston" in name else "layer3.0.weight"],
                           state_a["regression.weight" if "boston" in name else "layer3.0.weight"])


def test_shuffling_draws_from_the_given_generator_only() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    schedule = EpochPlan(2, 16, None, True)

    def steps(generator_seed: int, global_seed: int) -> list[list[float]]:
        model, optimizer, task, _ = setup(v, 0, 13)
        torch.manual_seed(global_seed)  # the global RNG must not decide the batch order
        calls: list[list[EpochRecord]] = []
        fit(model, optimizer, task, (x, y), (x, y), schedule, torch.Generator().manual_seed(generator_seed),
            calls.append)
        return [r.step_losses for r in flat(calls)]

    assert steps(5, 0) == steps(5, 1)
    assert steps(5, 0) != steps(6, 0)


def test_shuffle_changes_the_batches() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    _, shuffled = run_fit(v.model_copy(update={"shuffle": True}), (x, y), epochs=2, batch_size=16)
    _, ordered = run_fit(v.model_copy(update={"shuffle": False}), (x, y), epochs=2, batch_size=16)
    assert flat(shuffled)[0].step_losses != flat(ordered)[0].step_losses


@pytest.mark.parametrize("how", ["lr", "inputs"])
def test_divergence_stops_training_naming_epoch_and_step(how: str) -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    if how == "lr":
        v = v.model_copy(update={"lr": 1e6})
    else:
        x = x * 1e30
    calls: list[list[EpochRecord]] = []
    model, optimizer, task, generator = setup(v, 0, 13)
    with pytest.raises(TrainingDiverged) as caught:
        fit(model, optimizer, task, (x, y), (x, y), EpochPlan(20, 32, None, False), generator, calls.append,
            report_every_s=0)
    message = str(caught.value)
    assert "epoch" in message and "step" in message
    assert "lower the learning rate" in message
    # Epochs reported before the failing one were all finite.
    assert all(math.isfinite(r.metrics["train_loss"]) for r in flat(calls))


def test_divergence_message_names_the_first_bad_step() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    x[40] = float("nan")  # row 40 is in the second batch of 32 of every (unshuffled) epoch
    calls: list[list[EpochRecord]] = []
    model, optimizer, task, generator = setup(v.model_copy(update={"shuffle": False}), 0, 13)
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step 2 of 4"):
        fit(model, optimizer, task, (x, y), (x, y), EpochPlan(3, 32, None, False), generator, calls.append,
            report_every_s=0)
    assert calls == []


@pytest.mark.parametrize(("dataset", "functional"), [
    ("mnist", F.cross_entropy),
    ("boston", F.mse_loss),
    ("flower", F.binary_cross_entropy_with_logits),
])
@pytest.mark.parametrize("eval_batch_size", [None, 1000, 7, 64])
def test_evaluate_is_the_loss_over_the_whole_split(dataset, functional, eval_batch_size) -> None:
    name = {"mnist": "mnist_mlp", "boston": "boston_sequential", "flower": "flower_sequential"}[dataset]
    x, y = make_data(dataset, n=200)
    model, _, task, _ = setup(PARAMS.train[name], 0, x.shape[1])
    loss, correct = evaluate_sums(model, task, x, y, eval_batch_size)
    acc = None if correct is None else correct / len(y)
    with torch.no_grad():
        out = model(x)
    expected = functional(out, y).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.dim() == 0
    if dataset == "boston":
        assert acc is None
    else:
        right = (out.argmax(1) == y) if dataset == "mnist" else ((out > 0).float() == y)
        assert acc.item() == pytest.approx(right.float().mean().item())


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_the_mode_and_uses_eval_mode(training: bool) -> None:
    v = PARAMS.train["mnist_batchnet"]
    x, y = make_data("mnist", n=64)
    model, _, task, _ = setup(v, 0, 784)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(32, 784) * 3 + 2)  # running stats now differ from this batch's stats
    model.train(training)
    stats = model.layer1[1].running_mean.clone()
    loss, _ = evaluate_sums(model, task, x, y, 16)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert torch.equal(model.layer1[1].running_mean, stats)  # eval mode: running stats not updated
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_batchnet_one_row_last_batch_is_refused_before_training() -> None:
    v = PARAMS.train["mnist_batchnet"]
    x, y = make_data("mnist", n=129)  # 64 + 64 + 1: BatchNorm1d cannot train on the last batch
    model, optimizer, task, generator = setup(v, 0, 784)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    calls: list[list[EpochRecord]] = []
    with pytest.raises(BatchSizeError, match="batch_size 64 leaves a last batch of 1 row out of 129"):
        fit(model, optimizer, task, (x, y), (x, y), EpochPlan(1, v.batch_size, v.eval_batch_size, v.shuffle),
            generator, calls.append)
    assert calls == []
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    x, y = make_data("mnist", n=130)  # 64 + 64 + 2 trains fine
    fit(model, optimizer, task, (x, y), (x, y), EpochPlan(1, v.batch_size, v.eval_batch_size, v.shuffle),
        generator, calls.append)
    assert [r.epoch for r in flat(calls)] == [1]


class NanFromTrainingCall(torch.nn.Module):
    """Wraps a model; its training forward passes return NaN from call ``bad_call`` on."""

    def __init__(self, inner: torch.nn.Module, bad_call: int) -> None:
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if torch.is_grad_enabled():  # evaluation runs without gradients
            self.calls += 1
            if self.calls >= self.bad_call:
                return out * float("nan")
        return out


def test_finite_epochs_before_a_divergence_are_still_reported() -> None:
    v = PARAMS.train["boston_module"]
    x, y = make_data("boston")
    inner, optimizer, task, generator = setup(v, 0, 13)
    model = NanFromTrainingCall(inner, bad_call=3)  # full batch: call 3 is epoch 3
    calls: list[list[EpochRecord]] = []
    with pytest.raises(TrainingDiverged, match="at epoch 3, step 1 of 1"):
        fit(model, optimizer, task, (x, y), (x, y), EpochPlan(5, None, None, False), generator, calls.append,
            report_every_s=1e9)  # all epochs would come in one report at the end
    assert [[r.epoch for r in records] for records in calls] == [[1, 2]]


def test_only_batchnorm_and_dropout_models_switch_modes_for_evaluation() -> None:
    from bplab.params.schema import ModelSpec
    from bplab.train.loop import has_mode_dependent_layers

    assert has_mode_dependent_layers(build_model(ModelSpec(arch="batch_net", hidden=[8, 4]), 6, 3))
    assert has_mode_dependent_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    for variant in PARAMS.train.values():
        if variant.model.arch != "batch_net":
            assert not has_mode_dependent_layers(build_model(variant.model, 2, 1)), variant.model.arch


def test_only_recorded_epochs_are_evaluated_counted_and_reported() -> None:
    v = PARAMS.train["flower_sequential"]
    x, y = make_data("flower", 64)
    test = make_data("flower", 32, seed=7)
    model, optimizer, task, generator = setup(v, 0, 2)
    forwards = {"train": 0, "eval": 0}
    model.register_forward_hook(lambda *_: forwards.__setitem__(
        "train" if torch.is_grad_enabled() else "eval", forwards["train" if torch.is_grad_enabled() else "eval"] + 1))
    calls: list[list[EpochRecord]] = []
    fit(model, optimizer, task, (x, y), test, EpochPlan(50, None, None, False, record_every=10), generator,
        calls.append, report_every_s=0)
    assert [r.epoch for r in flat(calls)] == [1, 10, 20, 30, 40, 50]
    assert all(len(call) == 1 for call in calls)  # each report ends at a recorded epoch
    assert forwards == {"train": 50, "eval": 6}  # the tutorial's 50 steps; evaluated only when recorded
    # ... with the same numbers as a training that records every epoch
    model, optimizer, task, generator = setup(v, 0, 2)
    every: list[list[EpochRecord]] = []
    fit(model, optimizer, task, (x, y), test, EpochPlan(50, None, None, False), generator, every.append)
    by_epoch = {r.epoch: r for r in without_time(flat(every))}
    assert without_time(flat(calls)) == [dataclasses.replace(by_epoch[e], final=e == 50)
                                         for e in (1, 10, 20, 30, 40, 50)]


def test_a_divergence_between_recorded_epochs_is_named_at_its_own_epoch_and_step() -> None:
    v = PARAMS.train["boston_module"].model_copy(update={"shuffle": False})
    x, y = make_data("boston", 128)  # 4 steps of 32 per epoch
    model, optimizer, task, generator = setup(v, 0, 13)
    steps = []

    def nan_at_epoch_23_step_3(module, inputs, output):
        if torch.is_grad_enabled():
            steps.append(1)
            if len(steps) == 22 * 4 + 3:
                return output * float("nan")
        return None

    model.register_forward_hook(nan_at_epoch_23_step_3)
    calls: list[list[EpochRecord]] = []
    with pytest.raises(TrainingDiverged, match=r"at epoch 23, step 3 of 4"):
        fit(model, optimizer, task, (x, y), (x, y), EpochPlan(100, 32, None, False, record_every=10), generator,
            calls.append, report_every_s=0)
    assert [r.epoch for r in flat(calls)] == [1, 10, 20]  # the recorded epochs before it


def test_an_epoch_with_infinite_losses_of_both_signs_is_reported_as_a_divergence() -> None:
    from bplab.train.loop import _materialize, _Pending

    losses = [torch.tensor(v, dtype=torch.float64) for v in (float("inf"), float("-inf"))]  # math.fsum raises
    pending = _Pending(7, losses, [2, 2], [], None, None, [], 0.1, recorded=False)
    records, diverged = _materialize([pending], 4, 2, False, ["lr"])
    assert records == [] and isinstance(diverged, TrainingDiverged)
    assert "loss is inf at epoch 7, step 1 of 2" in str(diverged)


@pytest.mark.parametrize(("name", "rows", "threads_while_training"), [
    ("flower_sequential", 400, 1),  # 400 rows x 4 units: below torch's grain size, one thread
    ("mnist_mlp", 200, 2),  # 64-row batches x 784 inputs: above it, the threads stay
])
def test_tiny_models_train_on_one_thread_and_the_count_is_restored(name: str, rows: int,
                                                                   threads_while_training: int) -> None:
    v = PARAMS.train[name]
    model, optimizer, task, generator = setup(v, 0, make_data(v.dataset, n=rows)[0].shape[1])
    data = make_data(v.dataset, n=rows)
    seen: list[int] = []
    torch.set_num_threads(2)  # this module's fixture set 1; it restores the count after the test
    fit(model, optimizer, task, data, data, EpochPlan(2, v.batch_size, v.eval_batch_size, v.shuffle), generator,
        lambda records: seen.append(torch.get_num_threads()), report_every_s=0)
    assert seen and set(seen) == {threads_while_training}
    assert torch.get_num_threads() == 2
