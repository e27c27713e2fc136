"""`python -m bplab.compare` reads the study back from MLflow and writes it as Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab.commands import compare
from bplab.data import catalog
from bplab.params.schema import Params
from bplab.pipeline.evaluate import evaluate
from bplab.pipeline.train_stage import train
from bplab.tracking import registry
from support.pipeline import mlflow_client, tiny

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
    flower = tables["flower"]
    # flower_logreg's latest run has no test metrics: its evaluated run is shown too, after it
    assert [(r["variant"], r["epochs"], r["note"]) for r in flower] == [
        ("flower_logreg", "12", compare.NOT_EVALUATED), ("flower_logreg", "10", ""), ("flower_module", "30", "")]
    assert flower[0]["test_acc"] is None
    assert flower[1]["test_acc"] == pytest.approx(results["flower_logreg"]["test_acc"])
    assert flower[2]["test_acc"] == pytest.approx(results["flower_module"]["test_acc"])
    accuracy = {name: results[name]["test_acc"] for name in ("flower_logreg", "flower_module")}
    # flower_logreg registered first, so a tie keeps it; its evaluated run has the star either way
    best = "flower_module" if accuracy["flower_module"] > accuracy["flower_logreg"] else "flower_logreg"
    assert [(r["variant"], r["epochs"]) for r in flower if r["champion"]] == \
        [(best, "30" if best == "flower_module" else "10")]
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


def test_the_champion_and_the_last_evaluated_run_stay_in_view(mlflow_repo: Path) -> None:
    """After a train-only experiment (``dvc exp run -S train.mnist_mlp.epochs=3 train@mnist_mlp``)
    the variant's newest run has no test metrics, and the champion is an older run still."""
    client = mlflow_client()
    experiment = client.create_experiment("mnist")
    test_metrics = catalog.dataset("mnist").test_metrics

    def finished_run(variant: str, start: int, epochs: int, evaluated: bool) -> str:
        run = client.create_run(experiment, start_time=start, run_name=variant)
        client.log_param(run.info.run_id, "epochs", str(epochs))
        client.log_metric(run.info.run_id, "train_loss", 0.5)
        for metric in test_metrics if evaluated else ():
            client.log_metric(run.info.run_id, metric, 0.9)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    champion = finished_run("mnist_mlp", 1000, 20, evaluated=True)
    batchnet_old = finished_run("mnist_batchnet", 1100, 5, evaluated=True)
    batchnet = finished_run("mnist_batchnet", 1500, 20, evaluated=True)
    evaluated = finished_run("mnist_mlp", 2000, 30, evaluated=True)  # evaluated, but not better
    train_only = finished_run("mnist_mlp", 3000, 3, evaluated=False)
    client.create_registered_model("mnist")
    version = client.create_model_version("mnist", (mlflow_repo / "model").as_uri(), run_id=champion,
                                          tags={"run_id": champion})
    client.set_registered_model_alias("mnist", registry.CHAMPION, version.version)

    def shown(**options: bool) -> list[tuple[str, str, str, str]]:
        return [(r["run_id"], r["epochs"], r["champion"], r["note"]) for r in compare.study(client, **options)["mnist"]]

    assert shown() == [
        (batchnet[:8], "20", "", ""),
        (train_only[:8], "3", "", compare.NOT_EVALUATED),
        (evaluated[:8], "30", "", ""),
        (champion[:8], "20", "★", ""),
    ]
    assert batchnet_old[:8] in {row[0] for row in shown(every_run=True)}
    # An evaluate that failed after registering marks the champion's run FAILED: it stays in view.
    client.set_terminated(champion, "FAILED")
    assert shown()[-1] == (champion[:8], "20", "★", "run FAILED")


def test_compare_on_an_empty_store_says_so(mlflow_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--out", str(mlflow_repo / "c.md")]) == 0
    assert "No training runs found" in capsys.readouterr().out
