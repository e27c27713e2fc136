"""``python -m bplab.compare``: the whole study at a glance, read from MLflow.

Per dataset, one row per variant (its latest finished run; ``--all`` for every run): the key
params, the final test metrics and which run holds the registry's ``champion``. Printed as a
table and written as Markdown (``compare.md`` by default). The champion's run is always shown,
with its ★, even when newer runs of its variant followed it; a variant whose latest run was not
evaluated (a train-only ``dvc exp run ... train@V``) also shows its latest evaluated run, and
the ``note`` column says which row is which.

The runs come from :mod:`bplab.tracking.queries`, as every read of the command line does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bplab.data import catalog
from bplab.tracking import queries, store

PARAMS = ("model.arch", "model.hidden", "optimizer", "lr", "batch_size", "epochs", "init")


NOT_EVALUATED = "not evaluated"


def _datasets_in_store(client: Any) -> tuple[str, ...]:
    """The store's experiments that are datasets (a module ``bplab/data/<name>.py``), by name."""
    from bplab.errors import ParamsError

    found = []
    for name in queries.experiment_names(client):
        try:
            catalog.dataset(name)
        except ParamsError:
            continue
        found.append(name)
    return tuple(sorted(found))


def _shown_runs(client: Any, runs: list[Any], champion: str | None, test_metrics: tuple[str, ...],
                every_run: bool) -> list[Any]:
    """The runs a table shows, newest first: with ``every_run`` all of ``runs``, otherwise each
    variant's latest, its latest with test metrics when the latest has none (a train-only
    experiment must not hide the variant's last evaluated run), and always the champion's run."""
    shown, latest, evaluated = [], set(), set()
    for run in runs:
        variant, has_test = run.info.run_name, any(m in run.data.metrics for m in test_metrics)
        if every_run or variant not in latest or (has_test and variant not in evaluated) or \
                run.info.run_id == champion:
            shown.append(run)
        latest.add(variant)
        if has_test:
            evaluated.add(variant)
    if champion and champion not in {run.info.run_id for run in shown}:
        # not FINISHED (an evaluate that failed after registering ends the run FAILED), or deleted
        held = queries.run_or_none(client, champion)
        if held is not None:
            shown.append(held)
    return sorted(shown, key=lambda run: run.info.start_time or 0, reverse=True)


def _row(run: Any, columns: tuple[str, ...], test_metrics: tuple[str, ...], champion: str | None) -> dict[str, Any]:
    """One table row: params, metrics, the champion's star and a note on what the run lacks."""
    notes = [] if any(m in run.data.metrics for m in test_metrics) else [NOT_EVALUATED]
    if run.info.status != "FINISHED":
        notes.append(f"run {run.info.status}")
    row: dict[str, Any] = {"variant": run.info.run_name}
    row |= {p: run.data.params.get(p, "") for p in PARAMS}
    row |= {m: run.data.metrics.get(m) for m in columns}
    row["champion"] = "★" if run.info.run_id == champion else ""
    row["note"] = "; ".join(notes)
    row["dvc_exp"] = run.data.tags.get("dvc_exp", "")
    row["run_id"] = run.info.run_id[:8]
    return row


def study(client: Any, datasets: tuple[str, ...] | None = None, every_run: bool = False) -> dict[str, list[dict]]:
    """Rows per dataset: variant, params, metrics, champion flag, note, run id and ``dvc_exp`` tag.

    ``datasets`` defaults to every dataset with an experiment in the store. Without ``every_run``,
    rows are by variant, and a variant may have up to three (see :func:`_shown_runs`).
    """
    tables: dict[str, list[dict]] = {}
    for dataset in datasets or _datasets_in_store(client):
        runs = queries.finished_runs(client, dataset)
        if runs is None:
            continue
        described = catalog.dataset(dataset)
        champion = queries.champion_run(client, dataset)
        shown = _shown_runs(client, runs, champion, described.test_metrics, every_run)
        rows = [_row(run, described.compare_columns, described.test_metrics, champion) for run in shown]
        tables[dataset] = rows if every_run else sorted(rows, key=lambda r: r["variant"])
    return tables


def render(tables: dict[str, list[dict]], table_format: str) -> str:
    """The tables as text: ``github`` for Markdown, ``simple`` for the terminal."""
    from tabulate import tabulate

    parts = []
    for dataset, rows in tables.items():
        heading = f"## {dataset}" if table_format == "github" else f"{dataset}\n{'=' * len(dataset)}"
        parts.append(f"{heading}\n\n{tabulate(rows, headers='keys', tablefmt=table_format, floatfmt='.4g')}\n")
    return "\n".join(parts) if parts else "No training runs found in the MLflow store.\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The comparison's options, shared by ``python -m bplab.compare`` and ``bplab compare``."""
    parser.add_argument("--out", type=Path, default=Path("compare.md"), help="Markdown file (default: %(default)s)")
    parser.add_argument("--all", action="store_true", help="every finished run, not only each variant's latest")
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable; default: all)")


def run(args: argparse.Namespace) -> int:
    """Print the comparison of the store :func:`bplab.tracking.store.tracking_uri` names and write it as Markdown."""
    uri = store.tracking_uri()
    tables = study(store.client(uri), tuple(args.dataset or ()), args.all)
    print(f"MLflow store: {store.redact(uri)}\n")
    print(render(tables, "simple"))
    markdown = (f"# bplab: variants compared\n\nFrom the MLflow store `{store.redact(uri)}`.\n\n"
                f"{render(tables, 'github')}")
    args.out.write_text(markdown)
    print(f"Written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print the comparison and write it as Markdown."""
    parser = argparse.ArgumentParser(prog="python -m bplab.compare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
