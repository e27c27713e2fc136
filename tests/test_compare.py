"""`python -m bplab.compare` reads the study back from MLflow and writes it as Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab import compare
from bplab.config import Params
from bplab.evaluate import evaluate
from bplab.train.stage import train
from conftest import mlflow_client, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compare_tables_every_variant_with_params_metrics_and_champion(
        workspace: Path, params: Params, capsys: pytest.CaptureFixture[str]) -> None:
    results = {}
    for name, changes in (("flower_logreg", {"epochs": 10}), ("flower_module", {"epochs": 30}),
                          ("boston_module", {"epochs": 3, "batch_size": 16})):
        small = tiny(params, name, **changes)
        train(name, small)
        results[name] = evaluate(name, small)
    train("flower_logreg", tiny(params, "flower_logreg", epochs=12, lr=0.05))  # a newer, unevaluated run

    tables = compare.study(mlflow_client())
    assert set(tables) == {"flower", "boston"}
    flower = {row["variant"]: row for row in tables["flower"]}
    assert set(flower) == {"flower_logreg", "flower_module"}
    assert flower["flower_logreg"]["epochs"] == "12" and flower["flower_logreg"]["test_acc"] is None  # latest run
    assert flower["flower_module"]["test_acc"] == pytest.approx(results["flower_module"]["test_acc"])
    champions = [row["variant"] for row in tables["flower"] if row["champion"]]
    accuracy = {name: results[name]["test_acc"] for name in ("flower_logreg", "flower_module")}
    # flower_logreg registered first, so a tie keeps it; its champion run is then the evaluated one,
    # not the newer run compare shows, and no flower row has the star
    best = "flower_module" if accuracy["flower_module"] > accuracy["flower_logreg"] else "flower_logreg"
    assert champions == ([best] if best == "flower_module" else [])
    boston = tables["boston"][0]
    assert boston["test_rmse"] == pytest.approx(results["boston_module"]["test_rmse"]) and boston["champion"] == "★"
    assert len(compare.study(mlflow_client(), every_run=True)["flower"]) == 3

    out = workspace / "study.md"
    assert compare.main(["--out", str(out)]) == 0
    markdown = out.read_text()
    assert markdown.startswith("# bplab: variants compared")
    assert "## flower" in markdown and "## boston" in markdown and "| boston_module " in markdown
    assert "★" in markdown
    printed = capsys.readouterr().out
    assert "flower_module" in printed and f"Written to {out}" in printed


def test_compare_on_an_empty_store_says_so(mlflow_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--out", str(mlflow_repo / "c.md")]) == 0
    assert "No training runs found" in capsys.readouterr().out
