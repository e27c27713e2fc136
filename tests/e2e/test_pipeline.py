"""End to end: `dvc repro` of the whole DAG on tiny params in a temporary copy of the repository."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bplab.params.load import load_params
from bplab.testing.scratch import REPO, commit, set_params
from support.pipeline import TINY_PIPELINE, TinyPipeline
from support.processes import BPLAB, run

VARIANTS = list(load_params(REPO / "params.yaml").train)
TINY = TINY_PIPELINE


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline: TinyPipeline) -> tuple[Path, str]:
    """The tiny pipeline's copy (shared with test_ui.py, which reads a snapshot of its store) and
    what its `dvc repro` printed."""
    return tiny_pipeline.repo, tiny_pipeline.stdout


def status(repo: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout))


def test_every_variant_trained_and_evaluated_once(pipeline: tuple[Path, str]) -> None:
    repo, stdout = pipeline
    for variant in VARIANTS:
        assert stdout.count(f"Running stage 'train@{variant}'") == 1
        assert stdout.count(f"Running stage 'evaluate@{variant}'") == 1
        files = sorted(p.name for p in (repo / "models" / variant).iterdir())
        assert files == ["model.pt", "run.json", "state_dict.pt"], variant
        history = (repo / "history" / f"{variant}.csv").read_text().splitlines()
        assert len(history) == 1 + TINY[f"train.{variant}.epochs"]
        metrics = json.loads((repo / "metrics" / f"{variant}.json").read_text())
        assert ("test_acc" in metrics) != ("test_rmse" in metrics)
        assert list((repo / "plots" / variant).glob("*.png")), variant


def test_mlflow_has_one_finished_run_per_variant_per_dataset(pipeline: tuple[Path, str]) -> None:
    from mlflow import MlflowClient

    repo, _ = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    params = load_params(repo / "params.yaml")
    for dataset in params.datasets:
        experiment = client.get_experiment_by_name(dataset)
        runs = client.search_runs([experiment.experiment_id])
        expected = {name for name, v in params.train.items() if v.dataset == dataset}
        assert {r.info.run_name for r in runs} == expected
        for run_ in runs:
            assert run_.info.status == "FINISHED"
            record = json.loads((repo / "models" / run_.info.run_name / "run.json").read_text())
            assert record["run_id"] == run_.info.run_id
            assert run_.data.params["epochs"] == str(TINY[f"train.{run_.info.run_name}.epochs"])
            assert run_.data.tags["git_commit"]
            assert {"train_loss", "val_loss"} <= set(run_.data.metrics)
            assert ("test_acc" in run_.data.metrics) or ("test_rmse" in run_.data.metrics)
        versions = client.search_model_versions(f"name = '{dataset}'")
        assert len(versions) == len(expected)


def test_champion_loads_and_predicts(pipeline: tuple[Path, str]) -> None:
    import mlflow
    import numpy as np

    repo, _ = pipeline
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        model = mlflow.pytorch.load_model("models:/mnist@champion")
        x = np.load(repo / "data/processed/mnist/x_test.npy")[:16]
        import torch

        logits = model(torch.from_numpy(x))
        assert logits.shape == (16, 10)
    finally:
        mlflow.set_tracking_uri(None)


def test_dvc_metrics_and_plots_compare_the_variants(pipeline: tuple[Path, str]) -> None:
    repo, _ = pipeline
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    (workspace,) = shown.values()  # keyed by revision; the workspace's key varies between DVC releases
    files = workspace["data"]
    assert {Path(f).stem for f in files} == set(VARIANTS)
    plots = run(["dvc", "plots", "show", "--json"], repo).stdout
    data = json.loads(plots[plots.index("{"):])
    assert not data.get("errors")
    ids = set(data["data"])
    assert {f"history/{v}.csv" for v in VARIANTS} <= ids  # every variant's learning curves, none listed by hand
    assert {f"plots/{v}/confusion_matrix.png" for v in ("mnist_mlp", "mnist_batchnet")} <= ids


def test_dvc_remote_moves_data_and_models_to_a_fresh_clone(pipeline: tuple[Path, str], tmp_path: Path) -> None:
    repo, _ = pipeline
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    run(["dvc", "push"], repo)
    git = ["git", "-c", "user.name=bplab-tests", "-c", "user.email=tests@bplab.invalid"]
    run([*git, "commit", "-qam", "add the shared remote"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert status(clone) == set()
    for path in ("models/mnist_mlp/state_dict.pt", "data/processed/boston/x_train.npy", "checkpoints/boston_adam.pt"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path


def wait_for_queue(repo: Path, names: list[str], timeout: float = 600) -> str:
    """Poll `dvc queue status` until every named experiment has finished; return the last listing."""
    deadline = time.monotonic() + timeout
    while True:
        listing = run(["dvc", "queue", "status"], repo).stdout
        rows = [line for line in listing.splitlines() if any(name in line for name in names)]
        if len(rows) == len(names) and not any(word in line for line in rows for word in ("Queued", "Running")):
            return listing
        assert time.monotonic() < deadline, listing
        time.sleep(2)


def test_queued_sweep_runs_in_parallel_and_logs_to_the_repository_store(pipeline: tuple[Path, str]) -> None:
    from mlflow import MlflowClient

    repo, _ = pipeline
    names = ["sweep-lr-0.05", "sweep-lr-0.2"]
    for name in names:
        lr = name.rsplit("-", 1)[1]
        run(["dvc", "exp", "run", "--queue", "-S", f"train.flower_logreg.lr={lr}", "-n", name], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    listing = wait_for_queue(repo, names)
    assert listing.count("Success") >= 2, listing
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")  # the repository's store, not the temp copies'
    runs = client.search_runs([client.get_experiment_by_name("flower").experiment_id],
                              "tags.dvc_exp LIKE 'sweep-lr-%'")
    assert sorted((r.data.tags["dvc_exp"], r.data.params["lr"]) for r in runs) == [
        ("sweep-lr-0.05", "0.05"), ("sweep-lr-0.2", "0.2")]
    assert all(r.info.status == "FINISHED" and "test_acc" in r.data.metrics for r in runs)
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert all(name in shown for name in names)


def test_status_names_exactly_the_stages_an_edit_touches(pipeline: tuple[Path, str]) -> None:
    repo, _ = pipeline
    assert status(repo) == set()
    params_text = (repo / "params.yaml").read_text()
    try:
        set_params(repo, {"train.mnist_mlp.lr": 0.05})
        assert status(repo) == {"train@mnist_mlp", "evaluate@mnist_mlp"}
        (repo / "params.yaml").write_text(params_text)
    finally:
        (repo / "params.yaml").write_text(params_text)
    models_py = repo / "src/bplab/models/architectures.py"
    original = models_py.read_text()
    try:
        models_py.write_text(original + "\n# an edit\n")
        dirty = status(repo)
        assert dirty == {f"{s}@{v}" for s in ("train", "evaluate") for v in VARIANTS}
    finally:
        models_py.write_text(original)
    assert status(repo) == set()


def test_exp_run_set_param_tags_the_mlflow_run(pipeline: tuple[Path, str]) -> None:
    from mlflow import MlflowClient

    repo, _ = pipeline
    result = run(["dvc", "exp", "run", "-S", "train.boston_module.lr=0.01", "-n", "boston-lr-0.01"], repo)
    assert "Running stage 'train@boston_module'" in result.stdout
    assert result.stdout.count("Running stage") == 2  # train and evaluate of that variant only
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("boston").experiment_id],
                              "tags.dvc_exp = 'boston-lr-0.01'")
    assert len(runs) == 1
    assert runs[0].info.run_name == "boston_module" and runs[0].data.params["lr"] == "0.01"
    assert "test_rmse" in runs[0].data.metrics
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "boston-lr-0.01" in shown
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert set(diff) == {"metrics/boston_module.json"}
    assert diff["metrics/boston_module.json"]["test_rmse"]["new"] == pytest.approx(runs[0].data.metrics["test_rmse"])
    plots = run(["dvc", "plots", "diff", "HEAD", "--json"], repo).stdout
    revisions = json.loads(plots[plots.index("{"):])["data"]["history/boston_module.csv"][0]["revisions"]
    assert set(revisions) == {"HEAD", "workspace"}


def test_a_boston_data_edit_reaches_the_boston_branch_only(pipeline: tuple[Path, str]) -> None:
    # Runs next to last: it leaves the workspace on the edited params, uncommitted.
    repo, _ = pipeline
    set_params(repo, {"data.boston.preprocess.test_size": 0.25})
    assert status(repo) == {"preprocess@boston"}
    run(["dvc", "repro", "preprocess@boston"], repo)
    boston = [name for name, v in load_params(REPO / "params.yaml").train.items() if v.dataset == "boston"]
    # The new processed data now dirties exactly the Boston variants' train and evaluate stages.
    assert status(repo) == {f"{s}@{v}" for s in ("train", "evaluate") for v in boston}


def test_the_champion_lives_on_the_committed_split(pipeline: tuple[Path, str]) -> None:
    """Runs last, on the uncommitted Boston split the test above left: a version scored on a split
    that is not the committed one never takes the alias by itself, however it scores; once the
    split is committed, the alias follows it."""
    from mlflow import MlflowClient

    repo, _ = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")

    def champion():
        return client.get_model_version_by_alias("boston", "champion")

    def newest():
        return max(client.search_model_versions("name = 'boston'"), key=lambda v: int(v.version))

    before = champion()
    assert before.tags["split_committed"] == "true" and float(before.tags["val_rmse"]) > 0
    # An experiment in DVC's own copy of the baseline commit (as queued ones run), with the workspace's
    # uncommitted test_size 0.25 and more on top, and a far worse model: registered, never crowned.
    other = run(["dvc", "exp", "run", "--temp", "-n", "other-split", "-S", "data.boston.preprocess.val_seed=1",
                 "-S", "train.boston_module.epochs=1", "-S", "train.boston_module.lr=1e-6", "evaluate@boston_module"],
                repo)
    queued = newest()
    assert queued.tags["split_committed"] == "false" and queued.tags["split_digest"] != before.tags["split_digest"]
    assert float(queued.tags["val_rmse"]) > float(before.tags["val_rmse"])
    assert (f"registered boston version {queued.version}; not on the committed split (data.boston in params.yaml "
            f"differs from HEAD's), so champion stays on version {before.version}") in other.stderr
    assert champion().version == before.version
    # The edited split committed, its first evaluate takes the alias, whatever the old split's scores.
    commit(repo, "boston test_size 0.25")
    rescored = run(["dvc", "repro", "evaluate@boston_module"], repo)
    edited = newest()
    assert int(edited.version) == int(queued.version) + 1 and edited.tags["split_committed"] == "true"
    assert f"registered boston version {edited.version}; champion: version {edited.version}" in rescored.stderr
    assert champion().version == edited.version
    promoted = run([str(BPLAB), "promote", "boston", str(before.version)], repo)
    assert f"moved from version {edited.version} to version {before.version}" in promoted.stdout
    assert champion().version == before.version
