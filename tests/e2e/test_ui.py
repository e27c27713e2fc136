"""The MLflow UI as a trainer sees it: a real `mlflow server` (what `mlflow ui` runs) over the tiny
pipeline's store, loaded in headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bplab.params.load import load_params
from bplab.testing import browser
from bplab.testing.scratch import REPO
from bplab.tracking import store
from support.pipeline import TinyPipeline
from support.processes import unavailable

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from playwright.sync_api import Page

(KIND, MODEL_TRAINING) = next(iter(store.EXPERIMENT_KIND_TAG.items()))
MNIST = [name for name, variant in load_params(REPO / "params.yaml").train.items() if variant.dataset == "mnist"]
COMPARED = ("lr", "model.arch")  # params that differ between the two MNIST variants


def test_experiments_are_marked_for_model_training_and_older_ones_at_their_next_run(mlflow_repo: Path) -> None:
    from mlflow import MlflowClient

    from bplab.tracking.recorder import ensure_experiment

    client = MlflowClient(store.tracking_uri())
    created = ensure_experiment("flower")
    assert client.get_experiment(created).tags[KIND] == MODEL_TRAINING
    older = client.create_experiment("mnist")  # as a store from before the tag has it
    assert KIND not in client.get_experiment(older).tags
    assert ensure_experiment("mnist") == older
    assert client.get_experiment(older).tags[KIND] == MODEL_TRAINING
    chosen = client.create_experiment("boston", tags={KIND: "finetuning"})  # a kind picked in the UI stays
    assert ensure_experiment("boston") == chosen
    assert client.get_experiment(chosen).tags[KIND] == "finetuning"


@pytest.fixture(scope="module")
def snapshot_client(tiny_pipeline: TinyPipeline) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tiny_pipeline.store}")


@pytest.fixture(scope="module")
def ui(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of the MLflow UI over a snapshot of the tiny pipeline's store."""
    with browser.mlflow_ui(f"sqlite:///{tiny_pipeline.store}", tmp_path_factory.mktemp("ui")) as base:
        yield base


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    if not browser.CHROMIUM.exists():
        unavailable(f"no Chromium at {browser.CHROMIUM}: `make browser` installs Debian's chromium")
    if importlib.util.find_spec("playwright") is None:
        unavailable("Playwright is not installed: `make setup` installs the test extras")
    with browser.chromium_page() as page:
        yield page


def test_every_pipeline_experiment_is_a_model_training_experiment(snapshot_client: MlflowClient) -> None:
    experiments = {e.name: e.tags for e in snapshot_client.search_experiments() if e.name != "Default"}
    datasets = load_params(REPO / "params.yaml").datasets
    assert set(experiments) == {*datasets, *(f"{d}-data" for d in datasets)}
    assert {name: tags.get(KIND) for name, tags in experiments.items()} == dict.fromkeys(experiments, MODEL_TRAINING)


def test_experiment_page_opens_on_the_runs_table_of_every_variant(snapshot_client: MlflowClient, ui: str,
                                                                  page: Page) -> None:
    # The walk-through's link (README, docs): MLflow 3.17's UI picks GenAI or training per browser (a fresh one: GenAI,
    # whatever the experiment's tag says), and `?workflowType=machine_learning` picks training.
    experiment = snapshot_client.get_experiment_by_name("mnist")
    browser.open_runs_table(page, ui, experiment.experiment_id, MNIST)
    assert f"/experiments/{experiment.experiment_id}/runs" in page.url
    rows = page.get_by_role("grid").get_by_role("row").all_inner_texts()
    assert sorted(name for name in MNIST for row in rows if name in row.split()) == sorted(MNIST)
    for genai in ("Token Usage", "Detect Issues"):  # the GenAI overview's panels
        assert page.get_by_text(genai).count() == 0, genai


def test_compare_page_plots_and_tabulates_the_compared_params(snapshot_client: MlflowClient, ui: str,
                                                              page: Page) -> None:
    experiment = snapshot_client.get_experiment_by_name("mnist")
    runs = snapshot_client.search_runs([experiment.experiment_id], order_by=["attributes.run_name"])
    assert [run.info.run_name for run in runs] == sorted(MNIST)
    browser.open_compare(page, ui, experiment.experiment_id, [run.info.run_id for run in runs])
    axes = page.locator(".parcoords .axis-title").all_text_contents()
    assert set(COMPARED) <= set(axes) and "train_loss" in axes
    for key in COMPARED:
        values = {run.data.params[key] for run in runs}
        assert len(values) == 2, (key, values)
        row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True)).first
        cells = row.inner_text().split()
        assert cells[0] == key and values <= set(cells), (key, cells)


def test_model_version_page_shows_the_model_card_evaluate_wrote(snapshot_client: MlflowClient, ui: str,
                                                                page: Page) -> None:
    champion = snapshot_client.get_model_version_by_alias("mnist", "champion")
    browser.open_model_version(page, ui, "mnist", str(champion.version), "What it was trained on")
    # rendered as Markdown: the card's title a heading, its tables tables
    title = f"mnist version {champion.version}: {champion.tags['variant']}"
    assert page.get_by_role("heading", name=title).count() == 1
    row = page.get_by_role("row").filter(has=page.get_by_text("training run", exact=True)).first
    assert champion.run_id in row.inner_text()
