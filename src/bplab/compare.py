"""``python -m bplab.compare``: the whole study at a glance, read from MLflow.

Per dataset, one row per variant (its latest finished run; ``--all`` for every run): the key
params, the final test metrics and which run holds the registry's ``champion``. Printed as a
table and written as Markdown (``compare.md`` by default).

Also the registry lookup of ``bplab serve`` (:func:`aliased_version`): this module is where the
command line reads MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bplab import registry, track
from bplab.data import catalog

PARAMS = ("model.arch", "model.hidden", "optimizer", "lr", "batch_size", "epochs", "init")


def _champion_run(client: Any, dataset: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(dataset, registry.CHAMPION).tags.get("run_id")
    except MlflowException:
        return None


def check_store(tracking_uri: str) -> None:
    """Refuse a sqlite store that does not exist yet: MLflow would create an empty one on first
    use, and a lookup must not leave one behind."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise registry.RegistryError(f"no MLflow store at {track.redact(tracking_uri)}: run `dvc repro` here "
                                     f"first, or set {track.TRACKING_ENV}")


def aliased_version(name: str, tracking_uri: str, alias: str = registry.CHAMPION) -> Any:
    """The version of registered model ``name`` that holds ``alias`` in the store ``tracking_uri``.

    Raises :class:`bplab.registry.RegistryError` naming the model and the alias when the store,
    the model or the alias does not exist: what ``bplab serve`` reports instead of a traceback.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    store = track.redact(tracking_uri)
    check_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        version = client.get_registered_model(name).aliases.get(alias)
        if version is None:
            raise registry.RegistryError(f"registered model {name!r} in {store} has no version with the alias "
                                         f"{alias!r}")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise registry.RegistryError(f"no registered model {name!r} in {store}, so no {alias!r}: "
                                         f"train and evaluate a {name} variant first (`dvc repro`)") from None
        raise registry.RegistryError(f"registered model {name!r} in {store}: {exc.message}") from None


def _datasets_in_store(client: Any) -> tuple[str, ...]:
    """The store's experiments that are datasets (a module ``bplab/data/<name>.py``), by name."""
    from bplab.errors import ParamsError

    found = []
    for experiment in client.search_experiments():
        try:
            catalog.dataset(experiment.name)
        except ParamsError:
            continue
        found.append(experiment.name)
    return tuple(sorted(found))


def study(client: Any, datasets: tuple[str, ...] | None = None, every_run: bool = False) -> dict[str, list[dict]]:
    """Rows per dataset: variant, params, metrics, champion flag, run id and ``dvc_exp`` tag.

    ``datasets`` defaults to every dataset with an experiment in the store.
    """
    tables: dict[str, list[dict]] = {}
    for dataset in datasets or _datasets_in_store(client):
        experiment = client.get_experiment_by_name(dataset)
        if experiment is None:
            continue
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"])
        champion = _champion_run(client, dataset)
        seen: set[str] = set()
        rows = []
        for run in runs:
            variant = run.info.run_name
            if variant in seen and not every_run:
                continue
            seen.add(variant)
            row: dict[str, Any] = {"variant": variant}
            row |= {p: run.data.params.get(p, "") for p in PARAMS}
            row |= {m: run.data.metrics.get(m) for m in catalog.dataset(dataset).compare_columns}
            row["champion"] = "★" if run.info.run_id == champion else ""
            row["dvc_exp"] = run.data.tags.get("dvc_exp", "")
            row["run_id"] = run.info.run_id[:8]
            rows.append(row)
        tables[dataset] = sorted(rows, key=lambda r: r["variant"]) if not every_run else rows
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
    """Print the comparison of the store :func:`bplab.track.tracking_uri` names and write it as Markdown."""
    from mlflow import MlflowClient

    uri = track.tracking_uri()
    tables = study(MlflowClient(uri), tuple(args.dataset or ()), args.all)
    print(f"MLflow store: {track.redact(uri)}\n")
    print(render(tables, "simple"))
    markdown = (f"# bplab: variants compared\n\nFrom the MLflow store `{track.redact(uri)}`.\n\n"
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
