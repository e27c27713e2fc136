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
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bplab.outputs import write_bytes_atomic
from bplab.train.loop import EpochRecord

CHECKPOINTS = Path("checkpoints")


def checkpoint_file(variant: str, root: Path = Path(".")) -> Path:
    """``checkpoints/<variant>.pt`` under ``root``."""
    return root / CHECKPOINTS / f"{variant}.pt"


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
        payload = dataclasses.asdict(self)
        payload["history"] = [dataclasses.asdict(r) for r in self.history]
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        write_bytes_atomic(path, buffer.getvalue())


def load_resumable(path: Path, expected_fingerprint: str, epochs: int) -> tuple[Checkpoint | None, str]:
    """The checkpoint at ``path`` if training should resume from it, and why (or why not)."""
    if not path.exists():
        return None, "no checkpoint"
    try:
        payload = torch.load(path, weights_only=True)
        checkpoint = Checkpoint(**{**payload, "history": [EpochRecord(**r) for r in payload["history"]]})
    except (pickle.UnpicklingError, RuntimeError, EOFError, TypeError, KeyError) as exc:
        return None, f"unreadable checkpoint {path} ignored ({exc})"
    if checkpoint.fingerprint != expected_fingerprint:
        return None, f"checkpoint {path} is from other params; starting afresh"
    if checkpoint.epoch >= epochs:
        return None, f"checkpoint {path} is of a finished training; starting afresh"
    return checkpoint, f"resuming from {path} after epoch {checkpoint.epoch} of {epochs}"
