"""Training checkpoints, so an interrupted ``train@<variant>`` continues where it stopped.

``checkpoints/<variant>.pt`` (a persistent DVC output) is rewritten atomically at every progress
report: the model, optimizer and shuffling-generator states after the last reported epoch, the
history so far, and the MLflow run id. A later start with the same params resumes from it and
ends with the same numbers as an uninterrupted run. It holds only tensors and plain containers,
so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bplab.errors import ModelFileError
from bplab.outputs import write_bytes_atomic
from bplab.safe_load import load_without_code
from bplab.train.loop import EPOCH_METRICS, SECONDS, EpochRecord, history_columns


def fingerprint(settings: dict[str, Any]) -> str:
    """A digest of everything that shapes training (variant params, seed, data shapes)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    """The state after ``epoch`` completed epochs."""

    fingerprint: str
    run_id: str
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    initial_weights: dict[str, torch.Tensor]
    history: list[EpochRecord]

    def save(self, path: Path) -> None:
        """Write atomically: an interrupt during the write keeps the previous checkpoint."""
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        payload["history"] = _history_tensors(self.history)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        write_bytes_atomic(path, buffer.getvalue())


def _history_tensors(history: list[EpochRecord]) -> dict[str, torch.Tensor]:
    """The history as a few tensors: pickling one dict per epoch, at every report, would grow
    quadratically with 10000-epoch full-batch runs."""
    columns = {name: torch.tensor(values, dtype=torch.int64 if name == "epoch" else torch.float64)
               for name, values in history_columns(history).items()}
    columns["steps"] = torch.tensor([len(r.step_losses) for r in history], dtype=torch.int64)
    columns["step_losses"] = torch.tensor([v for r in history for v in r.step_losses], dtype=torch.float64)
    return columns


def _history_records(columns: dict[str, torch.Tensor]) -> list[EpochRecord]:
    """The inverse of :func:`_history_tensors`."""
    values = {k: v.tolist() for k, v in columns.items()}
    names = [name for name in EPOCH_METRICS if name in values]
    records, offset = [], 0
    for i, epoch in enumerate(values["epoch"]):
        count = values["steps"][i]
        records.append(EpochRecord(epoch, {name: values[name][i] for name in names},
                                   values["step_losses"][offset: offset + count], values[SECONDS][i]))
        offset += count
    return records


def load_resumable(path: Path, expected_fingerprint: str, epochs: int) -> tuple[Checkpoint | None, str]:
    """The checkpoint at ``path`` if training should resume from it, and why (or why not)."""
    if not path.exists():
        return None, "no checkpoint"
    try:
        payload = load_without_code(path, "a training checkpoint")
        checkpoint = Checkpoint(**{**payload, "history": _history_records(payload["history"])})
    except ModelFileError as exc:
        return None, f"unreadable checkpoint ignored: {exc}"
    except (TypeError, KeyError, AttributeError) as exc:
        return None, f"unreadable checkpoint {path} ignored ({exc})"
    if checkpoint.fingerprint != expected_fingerprint:
        return None, f"checkpoint {path} is from other params; starting afresh"
    if checkpoint.epoch >= epochs:
        return None, f"checkpoint {path} is of a finished training; starting afresh"
    return checkpoint, f"resuming from {path} after epoch {checkpoint.epoch} of {epochs}"
