"""The data stages of the DAG: ``download@<dataset>`` and ``preprocess@<dataset>``.

Each runs inside an MLflow run in experiment ``<dataset>-data`` (run name = stage) that records
where the data came from, its checksums and shapes, the fitted transform, and a picture.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from bplab import plots, track
from bplab.config import BOSTON_TARGET, Params
from bplab.data import boston, flower, mnist, processed
from bplab.data.fetch import FetchedFile
from bplab.paths import processed_dir, raw_dir

PREVIEW = "preview.png"


def _generated(paths: dict[str, Path]) -> list[FetchedFile]:
    return [
        FetchedFile(path.name, path, "generated from params", hashlib.sha256(path.read_bytes()).hexdigest(),
                    path.stat().st_size)
        for path in paths.values()
    ]


def download(dataset: str, params: Params, root: Path = Path(".")) -> list[FetchedFile]:
    """Fetch (mnist, boston) or generate (flower) the raw files, and log their provenance."""
    import mlflow

    out = raw_dir(dataset, root)
    with track.stage_run(f"{dataset}-data", "download", track.run_tags(dataset=dataset, stage="download")):
        if dataset == "mnist":
            files = mnist.download(out, params.data.mnist.download)
            mlflow.log_params(track.flatten({"download": params.data.mnist.download.model_dump(mode="json")}))
        elif dataset == "boston":
            files = boston.download(out, params.data.boston.download)
            mlflow.log_params(track.flatten({"download": params.data.boston.download.model_dump(mode="json")}))
        else:
            files = _generated(flower.write_raw(out, params.data.flower.download))
            mlflow.log_params(track.flatten({"generator": params.data.flower.download.model_dump()}))
        record = {f.name: {"source": f.source, "sha256": f.sha256, "bytes": f.size} for f in files}
        mlflow.log_params(track.flatten({"source": {n: r["source"] for n, r in record.items()},
                                         "sha256": {n: r["sha256"] for n, r in record.items()}}))
        mlflow.log_metrics({f"bytes.{name}": r["bytes"] for name, r in record.items()})
        mlflow.log_dict(record, "download.json")
    return files


def _preview(dataset: str, prepared: processed.Prepared, root: Path):
    if dataset == "mnist":
        x, y = prepared.splits["train"]
        return plots.digit_grid(x[:64], y[:64], title="First 64 training digits (normalised) and labels")
    if dataset == "boston":
        features, target = boston.read_table(raw_dir("boston", root) / boston.FILE_NAME)
        table = np.column_stack([features, target])
        return plots.histograms(table, boston.COLUMNS, title=f"Boston features and target {BOSTON_TARGET} (raw)")
    return plots.flower_scatter(prepared.splits)


def preprocess(dataset: str, params: Params, root: Path = Path(".")) -> processed.Prepared:
    """Turn raw files into train/test arrays ready to train on, and log the transform and a picture."""
    import mlflow

    source = raw_dir(dataset, root)
    settings = getattr(params.data, dataset).preprocess
    with track.stage_run(f"{dataset}-data", "preprocess", track.run_tags(dataset=dataset, stage="preprocess")):
        prepared = {"mnist": mnist.preprocess, "boston": boston.preprocess, "flower": flower.preprocess}[
            dataset](source, settings)
        out = processed_dir(dataset, root)
        processed.save(prepared, out)
        mlflow.log_params(track.flatten({"preprocess": settings.model_dump(mode="json"),
                                         "transform": prepared.transform}))
        mlflow.log_params({f"shape.{name}": "x".join(map(str, shape)) for name, shape in prepared.shapes().items()})
        mlflow.log_dict(json.loads((out / processed.TRANSFORM_FILE).read_text()), "transform.json")
        figure = _preview(dataset, prepared, root)
        with tempfile.TemporaryDirectory() as tmp:
            picture = Path(tmp) / f"{dataset}_{PREVIEW}"
            plots.save(figure, picture)
            mlflow.log_artifact(str(picture), "plots")
    return prepared
