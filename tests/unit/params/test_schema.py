"""params.yaml is validated once, and every bad value is reported with its full dotted key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bplab.errors import ParamsError
from bplab.outputs import publish_directory, write_text_atomic
from bplab.params.load import load_params, parse_params
from bplab.params.schema import Params
from bplab.paths import NAME_LIMIT, checkpoint_file, history_file, metrics_file, model_dir
from bplab.testing.scratch import REPO, set_dotted
from support.processes import params_only_repository, stage_in_process

RAW = yaml.safe_load((REPO / "params.yaml").read_text())
DATASETS: list[str] = RAW["datasets"]  # every dataset params.yaml lists, the tutorials' and any added since


def edited(dotted: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    """A deep copy of the repository's params with one key set (or removed)."""
    params = copy.deepcopy(RAW)
    set_dotted(params, dotted, value, delete=delete)
    return params


def one_of(names: list[str]) -> str:
    """How pydantic lists the allowed values of a choice: 'a', 'b' or 'c'."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def error_for(params: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(params)
    return str(caught.value)


def test_repository_params_load_with_the_tutorials_values() -> None:
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert set(params.train) >= {  # the tutorials' variants; params.yaml may have more
        "flower_logreg", "flower_twolayer", "flower_sequential", "flower_module",
        "mnist_mlp", "mnist_batchnet", "boston_module", "boston_sequential", "boston_adam",
    }
    mlp = params.train["mnist_mlp"]
    assert (mlp.lr, mlp.batch_size, mlp.eval_batch_size, mlp.epochs, mlp.optimizer) == (0.1, 64, 128, 20, "sgd")
    assert params.train["mnist_mlp"].model.hidden == [400, 200, 100]
    assert params.train["mnist_batchnet"].model.hidden == [300, 100]
    assert (params.train["mnist_batchnet"].lr, params.train["mnist_batchnet"].batch_size) == (0.01, 64)
    assert params.train["flower_logreg"].epochs == 100 and params.train["flower_logreg"].batch_size is None
    for name in ("flower_twolayer", "flower_sequential", "flower_module"):
        assert (params.train[name].epochs, params.train[name].lr, params.train[name].batch_size) == (10000, 1.0, None)
    for name in ("boston_module", "boston_sequential"):
        assert (params.train[name].lr, params.train[name].batch_size, params.train[name].epochs) == (0.001, 128, 30)
    adam = params.train["boston_adam"]
    assert adam.optimizer == "adam" and adam.param_groups == {"hidden": 0.0001, "regression": 0.01}
    flower = params.data.flower.download
    assert (flower.n_points, flower.petals, flower.noise, flower.seed) == (400, 4, 0.2, 1)


@pytest.mark.parametrize("dotted", [
    "train.mnist_mlp.lrr",
    "data.boston.preprocess.tst_size",
    "data.mnist.download.mirror",
    "train.boston_adam.model.hiden",
    "sed",
])
def test_unknown_key_is_named_with_its_full_path(dotted: str) -> None:
    message = error_for(edited(dotted, 1))
    assert f"{dotted}: unknown key" in message
    assert "allowed keys:" in message


def test_unknown_key_lists_the_allowed_ones() -> None:
    message = error_for(edited("train.mnist_mlp.lrr", 0.1))
    assert "allowed keys: dataset, model, epochs, batch_size" in message


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("train.mnist_mlp.epochs", "20", "valid integer"),
    ("train.mnist_mlp.lr", "fast", "valid number"),
    ("train.mnist_mlp.epochs", 2.5, "valid integer"),
    ("train.mnist_mlp.batch_size", [64], "valid integer"),
    ("seed", "zero", "valid integer"),
    ("data.flower.preprocess.standardize", "no", "valid boolean"),
])
def test_wrong_type_is_named(dotted: str, value: Any, expected: str) -> None:
    message = error_for(edited(dotted, value))
    assert dotted in message and expected in message


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("train.mnist_mlp.lr", -0.1, "greater than 0"),
    ("train.mnist_mlp.lr", 0, "greater than 0"),
    ("train.mnist_mlp.epochs", 0, "greater than 0"),
    ("train.boston_module.batch_size", -1, "greater than 0"),
    ("train.mnist_mlp.optimizer", "sgdd", "'sgd', 'adam'"),
    ("train.mnist_mlp.init", "zeros", "'default', 'normal', 'uniform', 'constant', 'xavier' or 'kaiming'"),
    ("train.mnist_mlp.dataset", "cifar", one_of(DATASETS)),
    ("train.mnist_mlp.model.arch", "resnet", "'logreg'"),
    ("train.boston_adam.param_groups.hidden", -1e-4, "greater than 0"),
    ("data.boston.preprocess.test_size", 1.5, "less than 1"),
    ("data.boston.preprocess.drop_features", ["PRICE"], "'CRIM'"),
    ("data.flower.download.n_points", 401, "must be even"),
    ("data.mnist.preprocess.std", 0, "greater than 0"),
    ("data.mnist.download.retries", 0, "greater than 0"),
    ("data.mnist.download.mirrors", [], "at least 1 item"),
    ("data.mnist.download.mirrors", ["not a url"], "URL"),
])
def test_impossible_value_is_named_with_what_is_allowed(dotted: str, value: Any, expected: str) -> None:
    message = error_for(edited(dotted, value))
    assert dotted.rsplit(".", 1)[0] in message and expected in message


def test_missing_required_key_is_named() -> None:
    assert "train.mnist_mlp.lr: required key is missing" in error_for(edited("train.mnist_mlp.lr", None, delete=True))


def test_every_error_is_reported_at_once() -> None:
    params = edited("train.mnist_mlp.lrr", 1)
    params["train"]["boston_module"]["epochs"] = 0
    message = error_for(params)
    assert "train.mnist_mlp.lrr" in message and "train.boston_module.epochs" in message


def test_variant_names_must_be_identifiers() -> None:
    params = copy.deepcopy(RAW)
    params["train"]["bad name!"] = params["train"]["mnist_mlp"]
    assert "bad name!" in error_for(params)


@pytest.mark.parametrize(("hidden", "count"), [
    ([65536, 65536, 65536], "8,590,065,664"),  # 4.3e9 parameters per layer: dies in the allocator
    ([32768, 32768], "1,073,774,592"),         # 2**30 + 32768: just over
])
def test_hidden_widths_beyond_memory_are_refused_naming_the_key(hidden: list[int], count: str) -> None:
    message = error_for(edited("train.mnist_mlp.model.hidden", hidden))
    assert f"train.mnist_mlp.model.hidden: Value error, the layers between hidden widths {hidden} have {count} " \
           "parameters; at most 1,073,741,824" in message, message


def test_hidden_widths_up_to_the_bound_load() -> None:
    params = parse_params(edited("train.mnist_mlp.model.hidden", [32768, 32767]))  # 1,073,709,057 parameters
    assert params.train["mnist_mlp"].model.hidden == [32768, 32767]


def test_a_variant_name_too_long_for_its_files_is_refused(tmp_path: Path) -> None:
    longest, too_long = "v" * NAME_LIMIT, "v" * 300
    params = copy.deepcopy(RAW)
    params["train"][too_long] = params["train"]["mnist_mlp"]
    message = error_for(params)
    assert f"train: Value error, variant name 'vvvvvvvvvvvvvvvvvvvvvvvv'... is 300 bytes long: at most {NAME_LIMIT}" \
           in message, message
    params = copy.deepcopy(RAW)
    params["train"][longest] = params["train"]["mnist_mlp"]
    assert longest in parse_params(params).train
    # The longest name accepted names every file it makes, with the writers that make them.
    write_text_atomic(history_file(longest, tmp_path), "epoch\n")
    write_text_atomic(metrics_file(longest, tmp_path), "{}")
    publish_directory(model_dir(longest, tmp_path), lambda staging: (staging / "run.json").write_text("{}"))
    from bplab.train.checkpoint import set_aside

    checkpoint = checkpoint_file(longest, tmp_path)
    write_text_atomic(checkpoint, "")
    assert set_aside(checkpoint).is_file()


def test_a_dataset_name_too_long_for_its_files_is_refused() -> None:
    message = error_for(edited("datasets", [*DATASETS, "d" * 300]))
    assert f"datasets: name 'dddddddddddddddddddddddd'... is 300 bytes long: at most {NAME_LIMIT}" in message, message


def test_yaml_1_2_floats_such_as_1e_3_are_numbers(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3", 1)
    assert "lr: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train["boston_module"].lr == pytest.approx(1e-3)


def test_unreadable_or_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="cannot read .*nowhere.yaml"):
        load_params(tmp_path / "nowhere.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="broken.yaml is not valid YAML"):
        load_params(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(tmp_path / "list.yaml")


@pytest.mark.parametrize("stage", ["download", "preprocess"])
def test_stage_stops_before_any_work_or_mlflow_run(tmp_path: Path, stage: str) -> None:
    repo = params_only_repository(tmp_path / "repo", {"train.mnist_mlp.lrr": 0.1})
    result = stage_in_process(stage, "flower", cwd=repo)
    assert result.returncode == 2
    assert f"{stage}@flower: error: params.yaml is invalid" in result.stderr
    assert "train.mnist_mlp.lrr: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (repo / "mlflow.db").exists()
    assert not (repo / "data" / "raw" / "flower").exists()


@pytest.mark.parametrize(("datasets", "expected"), [
    ([*DATASETS, "cifar"],
     "datasets: no dataset 'cifar': src/bplab/data/cifar.py does not exist (a dataset is one module there"),
    ([*DATASETS, "fetch"], "datasets: src/bplab/data/fetch.py is not a dataset module"),
    ([*DATASETS, "Wine!"], "datasets: 'Wine!' is not a dataset name"),
    ([], "datasets: List should have at least 1 item"),
])
def test_datasets_must_name_dataset_modules(datasets: list[str], expected: str) -> None:
    assert expected in error_for(edited("datasets", datasets))


def test_a_dataset_section_needs_its_dataset_listed_and_vice_versa() -> None:
    others = [name for name in DATASETS if name != "mnist"]
    without_mnist = edited("datasets", others)
    assert f"data.mnist: unknown key; allowed keys: {', '.join(others)}" in error_for(without_mnist)
    assert "datasets: required key is missing" in error_for(edited("datasets", None, delete=True))
    params = edited("datasets", [*others, "mnist"])
    del params["data"]["mnist"]
    assert "data.mnist: required key is missing" in error_for(params)  # mnist has no default mirrors


def test_a_dataset_whose_params_all_have_defaults_may_leave_its_section_out() -> None:
    params = copy.deepcopy(RAW)
    del params["data"]["flower"]
    assert parse_params(params).data.flower.download.n_points == 400


def test_a_data_stage_for_an_unlisted_dataset_stops_naming_the_list(tmp_path: Path) -> None:
    result = stage_in_process("download", "cifar", cwd=params_only_repository(tmp_path / "repo"))
    assert result.returncode == 2
    listed = ", ".join(DATASETS)
    assert f"download@cifar: error: datasets: 'cifar' is not listed in params.yaml; listed: {listed}" in result.stderr


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("seed", -1, "greater than or equal to 0"),
    ("data.flower.download.test_seed", -5, "greater than or equal to 0"),
    ("data.boston.preprocess.split_seed", -42, "greater than or equal to 0"),
    ("seed", 2**32, "less than 4294967296"),
    ("data.mnist.download.backoff_s", float("inf"), "finite number"),
    ("train.mnist_mlp.lr", float("nan"), "finite number"),
    ("data.mnist.download.timeout_s", 1e300, "less than or equal to 3600"),
    ("data.flower.download.n_points", 10**12, "less than or equal to 10000000"),
    ("train.mnist_mlp.model.hidden", [400, 10**9, 100], "less than or equal to 65536"),
])
def test_known_bad_values_are_refused_naming_the_key(dotted: str, value: Any, expected: str) -> None:
    message = error_for(edited(dotted, value))
    assert dotted.split(".")[0] in message and expected in message, message


def test_momentum_is_refused_for_an_optimizer_without_it() -> None:
    params = edited("train.boston_adam.momentum", 0.9)
    assert "train.boston_adam: Value error, momentum: adam has no momentum" in error_for(params)
    assert parse_params(edited("train.boston_module.momentum", 0.9)).train["boston_module"].momentum == 0.9


# --- schedules, early stopping, system metrics -----------------------------------------------------

def test_schedules_and_early_stopping_are_off_by_default() -> None:
    params = load_params(REPO / "params.yaml")
    assert all(v.scheduler is None and v.early_stopping is None for v in params.train.values())
    assert params.tracking.system_metrics == 2  # on: they only observe


@pytest.mark.parametrize(("value", "expected"), [
    ({"name": "step"}, "train.mnist_mlp.scheduler.step_size: required key is missing"),
    ({"name": "stp"}, "train.mnist_mlp.scheduler.name: 'stp' is not one of step, multistep, exponential, cosine, "
                      "onecycle, plateau"),
    ({"step_size": 3}, "train.mnist_mlp.scheduler.name: required key is missing (one of step, multistep"),
    ({"name": "cosine", "step_size": 3}, "train.mnist_mlp.scheduler.step_size: unknown key; allowed keys: name, "
                                         "T_max, eta_min"),
    ({"name": "multistep", "milestones": [5, 5]}, "train.mnist_mlp.scheduler.milestones: Value error, milestones "
                                                  "must be strictly increasing epochs, got [5, 5]"),
    ({"name": "plateau", "factor": 1.5}, "train.mnist_mlp.scheduler.factor: Input should be less than 1 (got 1.5)"),
    ({"name": "onecycle"}, "train.mnist_mlp.scheduler.max_lr: required key is missing"),
    ({"name": "exponential", "gamma": float("nan")}, "train.mnist_mlp.scheduler.gamma: Input should be a finite "
                                                     "number (got nan)"),
])
def test_a_bad_scheduler_is_named_without_the_union_tag(value: Any, expected: str) -> None:
    assert expected in error_for(edited("train.mnist_mlp.scheduler", value))


@pytest.mark.parametrize(("value", "expected"), [
    ({"patience": 0}, "train.mnist_mlp.early_stopping.patience: Input should be greater than 0 (got 0)"),
    ({"metric": "accuracy"}, "train.mnist_mlp.early_stopping.metric: Input should be 'train_loss', 'val_loss', "
                             "'train_acc' or 'val_acc' (got 'accuracy')"),
    ({"metric": "test_loss"}, "train.mnist_mlp.early_stopping.metric: Value error, 'test_loss': the test split is "
                              "reported, never used to choose a model; watch a validation metric (val_loss, "
                              "val_acc) or a training one"),
    ({"metric": "eval_acc"}, "train.mnist_mlp.early_stopping.metric: Value error, 'eval_acc' is now called "
                             "'val_acc': per-epoch metrics are measured on the validation split"),
    ({"restore": True}, "train.mnist_mlp.early_stopping.restore: unknown key; allowed keys: metric, mode, patience, "
                        "min_delta, restore_best"),
    ({"min_delta": -1.0}, "train.mnist_mlp.early_stopping.min_delta: Input should be greater than or equal to 0"),
])
def test_bad_early_stopping_is_named(value: Any, expected: str) -> None:
    assert expected in error_for(edited("train.mnist_mlp.early_stopping", value))


def test_system_metrics_interval_is_checked() -> None:
    assert "tracking.system_metrics: Input should be greater than or equal to 0.5 (got 0.1)" in error_for(
        edited("tracking.system_metrics", 0.1))
    assert parse_params(edited("tracking.system_metrics", None)).tracking.system_metrics is None
