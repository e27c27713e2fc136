"""The data stages of the DAG: ``download@<dataset>`` and ``preprocess@<dataset>``, for any dataset.

Each runs inside an MLflow run in experiment ``<dataset>-data`` (run name = stage) that records
where the data came from, its checksums and shapes, the fitted transform, and a picture. What is
particular to a dataset comes from its module (:mod:`bplab.data.catalog`).
"""

from __future__ import annotations

import json
from pathlib import Path

from bplab.data import catalog, processed
from bplab.data.fetch import FetchedFile
from bplab.errors import ParamsError
from bplab.params.schema import Params
from bplab.paths import processed_dir, raw_dir
from bplab.tracking import store
from bplab.tracking.recorder import Recorder

PREVIEW = "preview.png"


def _listed(name: str, params: Params) -> catalog.Dataset:
    if name not in params.datasets:
        raise ParamsError(f"datasets: {name!r} is not listed in params.yaml; listed: {', '.join(params.datasets)}")
    return catalog.dataset(name)


def download(name: str, params: Params, root: Path = Path(".")) -> list[FetchedFile]:
    """Fetch or generate the raw files of dataset ``name``, and log their provenance."""
    dataset = _listed(name, params)
    settings = getattr(params.data, name).download
    tags = store.run_tags(dataset=name, stage="download")
    with Recorder.run(store.data_experiment(name), "download", tags) as recorder:
        files = dataset.download(raw_dir(name, root), settings)
        record = {f.name: {"source": f.source, "sha256": f.sha256, "bytes": f.size} for f in files}
        recorder.log_params({"download": settings.model_dump(mode="json"),
                             "source": {n: r["source"] for n, r in record.items()},
                             "sha256": {n: r["sha256"] for n, r in record.items()}})
        recorder.log_metrics({f"bytes.{n}": r["bytes"] for n, r in record.items()})
        recorder.log_dict(record, "download.json")
    return files


def preprocess(name: str, params: Params, root: Path = Path(".")) -> processed.Prepared:
    """Turn raw files into train/test arrays ready to train on, and log the transform and a picture."""
    dataset = _listed(name, params)
    settings = getattr(params.data, name).preprocess
    source = raw_dir(name, root)
    tags = store.run_tags(dataset=name, stage="preprocess")
    with Recorder.run(store.data_experiment(name), "preprocess", tags) as recorder:
        prepared = dataset.preprocess(source, settings)
        out = processed_dir(name, root)
        processed.save(prepared, out)
        recorder.log_params({"preprocess": settings.model_dump(mode="json"), "transform": prepared.transform})
        recorder.log_params({f"shape.{split}": "x".join(map(str, shape)) for split, shape in prepared.shapes().items()})
        recorder.log_dict(json.loads((out / processed.TRANSFORM_FILE).read_text()), "transform.json")
        recorder.log_figures({f"{name}_{PREVIEW}": dataset.preview(prepared, source)})
    return prepared
