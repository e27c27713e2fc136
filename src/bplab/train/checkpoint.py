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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bplab.errors import ModelFileError
from bplab.outputs import write_bytes_atomic
from bplab.safe_load import load_without_code
from bplab.train.loop import EpochRecord


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
        payload["history"] = _history_columns(self.history)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        write_bytes_atomic(path, buffer.getvalue())


def _history_columns(history: list[EpochRecord]) -> dict[str, torch.Tensor]:
    """The history as a few tensors: pickling one dict per epoch, at every report, would grow
    quadratically with 10000-epoch full-batch runs."""
    def column(values: list[float | None]) -> torch.Tensor:
        return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)

    return {
        "epoch": torch.tensor([r.epoch for r in history], dtype=torch.int64),
        "train_loss": column([r.train_loss for r in history]),
        "eval_loss": column([r.eval_loss for r in history]),
        "train_acc": column([r.train_acc for r in history]),
        "eval_acc": column([r.eval_acc for r in history]),
        "seconds": column([r.seconds for r in history]),
        "steps": torch.tensor([len(r.step_losses) for r in history], dtype=torch.int64),
        "step_losses": column([v for r in history for v in r.step_losses]),
    }


def _history_records(columns: dict[str, torch.Tensor]) -> list[EpochRecord]:
    """The inverse of :func:`_history_columns`."""
    values = {k: v.tolist() for k, v in columns.items()}
    has_accuracy = not all(math.isnan(v) for v in values["train_acc"])
    records, offset = [], 0
    for i, epoch in enumerate(values["epoch"]):
        count = values["steps"][i]
        records.append(EpochRecord(
            epoch, values["train_loss"][i], values["eval_loss"][i],
            values["train_acc"][i] if has_accuracy else None, values["eval_acc"][i] if has_accuracy else None,
            values["step_losses"][offset: offset + count], values["seconds"][i]))
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
