"""Screenshots of the MLflow UI for the walk-through (README and docs), taken in headless Chromium.

It starts `mlflow server` (what `mlflow ui` runs) on a copy of the repository's store
(``mlflow.db`` and ``mlartifacts/``, with the artifact locations rewritten to the copy), so the
real store is only read, and writes:

- ``runs-table.png``: an experiment opened on its runs table, one row per run, named after the variant;
- ``compare.png``: two runs compared, the parallel-coordinates plot of the params that differ;
- ``model-metrics.png``: a run's "Model metrics" tab, its per-epoch curves (``lr`` among them);
- ``system-metrics.png``: its "System metrics" tab, MLflow's samples of CPU, memory, disk, network;
- ``registry.png``: the registered models, one per dataset, with the version aliased ``@champion``;
- ``model-card.png``: the model version page of the experiment's ``@champion``, its description
  the model card evaluate wrote (``--only model-card`` takes this one alone, from any store).

Usage (after ``make repro``; needs ``make browser``)::

    .venv/bin/python bench/screenshots.py [--experiment mnist] [--out docs/ui] [--only model-card]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

from bplab.params.load import load_params
from bplab.testing import browser

REPO = Path(__file__).resolve().parents[1]
MODELS = ("boston", "flower", "mnist")  # the registered models, one per dataset
# What a user's one click on "Model training" (the sidebar's switch) leaves in the browser, and the
# model registry's promotion pop-up dismissed: each page then shows what a trainer works with.
_SETTLED_BROWSER = ("localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
                    "localStorage.setItem('_mlflow_model_registry_promo_modal_dismissed_v1', 'true');")

# A chart per metric, each with its curve or bar drawn (charts below the fold load last).
_EVERY_CHART_DRAWN = """n => {
    const charts = [...document.querySelectorAll('.js-plotly-plot')];
    return charts.length >= n && charts.every(chart => chart.querySelector('.trace'));
}"""


def copy_store(db: Path, artifacts: Path, dest: Path) -> Path:
    """Copy the sqlite store ``db`` and its ``artifacts`` folder into ``dest``; every artifact
    location that pointed into ``artifacts`` points into the copy. Returns the copied database."""
    copy = dest / "mlflow.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)  # a consistent copy, even while a stage writes to the store
        old, new = artifacts.resolve().as_uri(), (dest / "mlartifacts").as_uri()
        for (table,) in target.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for _, column, kind, *_ in target.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(text in kind.upper() for text in ("CHAR", "TEXT", "CLOB")):
                    target.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                   f'WHERE instr("{column}", ?) > 0', (old, new, old))
        target.commit()
    shutil.copytree(artifacts, dest / "mlartifacts")
    return copy


def latest_runs(store: Path, experiment: str, variants: list[str]):
    """The experiment's id and the latest finished run of each variant, in ``variants``' order."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    latest = {}
    for run in runs:
        latest.setdefault(run.info.run_name, run)
    return experiment_id, [latest[name] for name in variants if name in latest]


def capture(page, path: Path) -> None:
    """Screenshot ``page`` (its content already rendered) and say where it went."""
    page.screenshot(path=str(path))
    print(f"{path} ({path.stat().st_size // 1024} KiB)")


def take(base: str, experiment_id: str, runs, out: Path) -> None:
    """The four screenshots, from the UI at ``base``."""
    names = [run.info.run_name for run in runs]
    with browser.chromium_page() as page:
        page.add_init_script(_SETTLED_BROWSER)
        browser.open_runs_table(page, base, experiment_id, names)
        capture(page, out / "runs-table.png")
        browser.open_compare(page, base, experiment_id, [run.info.run_id for run in runs[:2]])
        capture(page, out / "compare.png")
        page.set_viewport_size({"width": 1400, "height": 1350})  # every chart of the run, three rows
        page.goto(f"{base}/#/experiments/{experiment_id}/runs/{runs[0].info.run_id}/model-metrics")
        model_metrics = [m for m in runs[0].data.metrics if not m.startswith("system/")]  # their own tab
        page.wait_for_function(_EVERY_CHART_DRAWN, arg=len(model_metrics))
        capture(page, out / "model-metrics.png")
        if system := [m for m in runs[0].data.metrics if m.startswith("system/")]:
            page.goto(f"{base}/#/experiments/{experiment_id}/runs/{runs[0].info.run_id}/system-metrics")
            page.wait_for_function(_EVERY_CHART_DRAWN, arg=len(system))
            capture(page, out / "system-metrics.png")
        page.set_viewport_size({"width": 1400, "height": 600})
        page.goto(f"{base}/#/models")
        for model in (*MODELS, "champion"):
            page.get_by_text(model).first.wait_for()
        capture(page, out / "registry.png")


def take_model_card(base: str, store: Path, dataset: str, out: Path) -> None:
    """``model-card.png``: the page of ``dataset``'s champion version, its model card rendered."""
    from mlflow import MlflowClient

    version = MlflowClient(f"sqlite:///{store}").get_model_version_by_alias(dataset, "champion")
    with browser.chromium_page(1400, 1180) as page:  # the card, down to how to load it
        page.add_init_script(_SETTLED_BROWSER)
        browser.open_model_version(page, base, dataset, str(version.version), "What it was trained on")
        capture(page, out / "model-card.png")


def main(argv: list[str] | None = None) -> int:
    """Take the screenshots (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="mnist", help="the dataset whose experiment is shown")
    parser.add_argument("--store", type=Path, default=REPO / "mlflow.db", help="the sqlite store to copy")
    parser.add_argument("--artifacts", type=Path, default=REPO / "mlartifacts", help="its artifact folder")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui", help="where the PNGs go")
    parser.add_argument("--only", choices=["model-card"], help="take this screenshot alone")
    args = parser.parse_args(argv)
    variants = [name for name, v in load_params(REPO / "params.yaml").train.items() if v.dataset == args.experiment]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bplab-ui-") as scratch:
        store = copy_store(args.store, args.artifacts, Path(scratch))
        experiment_id, runs = latest_runs(store, args.experiment, variants)
        if args.only is None and len(runs) < 2:
            print(f"experiment {args.experiment} needs two finished runs: run `make repro` first", file=sys.stderr)
            return 1
        with browser.mlflow_ui(f"sqlite:///{store}", Path(scratch)) as base:
            if args.only is None:
                take(base, experiment_id, runs, args.out)
            take_model_card(base, store, args.experiment, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
