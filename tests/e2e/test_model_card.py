"""Model cards on the tiny pipeline's registry: evaluate wrote one on every version it registered,
`bplab lineage` prints it for a model a user names, and `bplab report` puts each champion's, with
the study's tables and pictures, in one page that links to nothing."""

from __future__ import annotations

import base64
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from bplab.data import catalog
from bplab.lineage.card import CARD_FILE
from bplab.params.load import load_params
from bplab.testing.scratch import REPO
from support.pipeline import BASELINE, TinyPipeline
from support.processes import BPLAB, run

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARAMS = load_params(REPO / "params.yaml")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(tiny_pipeline: TinyPipeline) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tiny_pipeline.store}")


def bplab(tiny_pipeline: TinyPipeline, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``bplab ARGS`` (the console script) over the snapshot of the tiny pipeline's store."""
    env = dict(os.environ) | {"MLFLOW_TRACKING_URI": f"sqlite:///{tiny_pipeline.store}"}
    return subprocess.run([str(BPLAB), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def stored_artifact(tiny_pipeline: TinyPipeline, artifact_uri: str, path: str) -> Path:
    """Artifact ``path`` of a run in the snapshot's copy of the artifacts (the baseline goes on changing)."""
    relative = artifact_uri.removeprefix((tiny_pipeline.repo.resolve() / "mlartifacts").as_uri() + "/")
    return tiny_pipeline.artifacts / relative / path


def test_every_version_carries_its_card_as_description_and_as_its_runs_artifact(
        client: MlflowClient, tiny_pipeline: TinyPipeline) -> None:
    versions = [v for dataset in PARAMS.datasets for v in client.search_model_versions(f"name = '{dataset}'")]
    assert sorted(v.tags["variant"] for v in versions) == sorted(PARAMS.train)  # one version per variant
    for version in versions:
        card = version.description
        assert card.startswith(f"# {version.name} version {version.version}: {version.tags['variant']}\n"), card
        artifact = stored_artifact(tiny_pipeline, client.get_run(version.run_id).info.artifact_uri, CARD_FILE)
        assert artifact.read_text() == card
        assert "champion` (now)" not in card  # a stored card names no alias: aliases move, the card stays


def _cell(card: str, row: str, column: int) -> str:
    """The ``column``-th cell of the card's table row that starts with ``row``."""
    line = next(line for line in card.splitlines() if line.startswith(f"| {row} |"))
    return line.split("|")[column + 1].strip()


def test_a_champions_card_names_its_run_test_score_and_the_processed_data_dvc_lock_records(
        client: MlflowClient, tiny_pipeline: TinyPipeline) -> None:
    lock = yaml.safe_load(run(["git", "show", f"{BASELINE}:dvc.lock"], tiny_pipeline.repo).stdout)
    for dataset in PARAMS.datasets:
        champion = client.get_model_version_by_alias(dataset, "champion")
        card, reported = champion.description, catalog.dataset(dataset).champion.reported
        test_value = client.get_run(champion.run_id).data.metrics[reported]
        processed = next(out["md5"] for out in lock["stages"][f"preprocess@{dataset}"]["outs"]
                         if out["path"] == f"data/processed/{dataset}")
        assert _cell(card, "training run", 1).startswith(f"`{champion.run_id}` (experiment {dataset}, run "
                                                        f"{champion.tags['variant']}")
        assert _cell(card, reported.removeprefix("test_"), 2) == f"{test_value:.6g}"  # the test column
        assert _cell(card, "processed data", 2) == f"`{processed}` (DVC md5)"
        assert f'mlflow.pytorch.load_model("models:/{dataset}/{champion.version}")' in card


def test_lineage_prints_the_card_with_the_aliases_held_now_and_refuses_an_unknown_model(
        client: MlflowClient, tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    champion = client.get_model_version_by_alias("boston", "champion")
    printed = bplab(tiny_pipeline, "lineage", "models:/boston@champion", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    stored = champion.description.splitlines()
    aliases = next(i for i, line in enumerate(stored) if line.startswith("| aliases |"))
    assert printed.stdout.splitlines() == [*stored[:aliases], "| aliases | `@champion` (now) |", *stored[aliases + 1:]]

    unknown = bplab(tiny_pipeline, "lineage", "models:/boston@nobody", cwd=tmp_path)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.splitlines() == [
        f"bplab lineage: error: no registered model boston@nobody in sqlite:///{tiny_pipeline.store}"]


class _Page(HTMLParser):
    """Every attribute that loads or links something, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "srcset", "data")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_is_one_self_contained_page_with_each_datasets_table_card_and_pictures(
        client: MlflowClient, tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    written = bplab(tiny_pipeline, "report", "--out", "study.html", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    html = (tmp_path / "study.html").read_text()
    page = _Page()
    page.feed(html)
    assert "<link" not in html and "@import" not in html and "url(" not in html  # no stylesheet from elsewhere
    images = [value for tag, _, value in page.links if tag == "img"]
    assert [link for link in page.links if link[0] != "img"] == []
    assert len(images) >= 2 * len(PARAMS.datasets)  # learning curves and evaluate's pictures, per champion
    for image in images:
        assert image.startswith("data:image/png;base64,")
        assert base64.b64decode(image.removeprefix("data:image/png;base64,"), validate=True).startswith(PNG)
    text = "".join(page.text)
    for dataset in PARAMS.datasets:
        champion = client.get_model_version_by_alias(dataset, "champion")
        assert f"{dataset} version {champion.version}: {champion.tags['variant']}" in text  # the card's title
        assert champion.run_id in text and "What it was trained on" in text
        variants = [name for name, variant in PARAMS.train.items() if variant.dataset == dataset]
        assert all(f"<td>{name}</td>" in html for name in variants)  # the compare table's rows
