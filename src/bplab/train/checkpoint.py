"""Training checkpoints, so an interrupted ``train@<variant>`` continues where it stopped.

``checkpoints/<variant>.pt`` (a persistent DVC output) is written atomically when a run starts and
at every progress report, once that report's metrics are stored in MLflow: the model, optimizer,
learning-rate schedule, early-stopping and shuffling-generator states after the last reported
epoch, the history so far, the epochs planned, the MLflow run id, and the fingerprint of what
shaped the training (params, seed, the data's digest, the model's architecture, the code). A
later start with the same fingerprint resumes from it, on whatever device, and ends with the same
numbers as an uninterrupted run. A checkpoint of an unfinished training that cannot be resumed
is set aside (renamed, kept), never silently lost. It holds only tensors and plain containers,
so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bplab.errors import ModelFileError
from bplab.models.safe_load import load_without_code
from bplab.outputs import write_bytes_atomic
from bplab.params.metrics import SECONDS
from bplab.train.loop import EpochRecord, history_columns


def fingerprint(parts: dict[str, Any]) -> dict[str, str]:
    """A digest of each part of what shapes a training (``params``, ``data``, ``model``, ``code``, ...)."""
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
            for name, value in parts.items()}


def code_digests(root: Path, variant: str, dataset: str) -> dict[str, str]:
    """The sha256 of each Python file that ``root``'s dvc.yaml lists as a dependency of the
    ``train`` stages (a directory: the ``.py`` files under it), by path; ``{}`` without a readable
    dvc.yaml (:func:`bplab.stage_deps.code_deps`).

    The fingerprint's ``code``: a training interrupted under one version of the code is not
    resumed under another, which recorded the new commit while ``reproduce/`` held the old. The
    deps are dvc.yaml's, the list DVC reruns the stage for (tests/integration/test_dvc_contract.py checks it
    against the imports); ``${key}`` and ``${item.dataset}`` are resolved for this variant.
    """
    from bplab.stage_deps import code_deps

    digests = {}
    for name in code_deps(root, "train", {"key": variant, "item.dataset": dataset}) or []:  # ~20 ms in all
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.suffix == ".py" else []
        for file in files:
            digests[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


@dataclass
class Checkpoint:
    """The state after ``epoch`` completed epochs."""

    fingerprint: dict[str, str]
    run_id: str
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    initial_weights: dict[str, torch.Tensor]
    history: list[EpochRecord]
    controls: dict[str, Any] = dataclasses.field(default_factory=dict)  # schedules.LrScheduleAndStopping.state_dict()
    epochs: int = 0  # the epochs the training was to run (0: written before checkpoints recorded them)

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended this training: it is finished, though short of its epochs."""
        return (self.controls.get("stopper") or {}).get("stopped_epoch") is not None

    @property
    def finished(self) -> bool:
        """Whether the training it holds ended, by its own epochs (not today's params') or early stopping."""
        return self.stopped_early or 0 < self.epochs <= self.epoch

    def to_bytes(self) -> bytes:
        """The checkpoint file's content, taken now (training may go on while it is written)."""
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        payload["history"] = _history_tensors(self.history)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, path: Path) -> Checkpoint:
        """The checkpoint in ``raw`` (read from ``path``), loaded without running code from it."""
        payload = load_without_code(path, "a training checkpoint", data=raw)
        return cls(**{**payload, "history": _history_records(payload["history"])})

    def save(self, path: Path) -> None:
        """Write atomically: an interrupt during the write keeps the previous checkpoint."""
        write_bytes_atomic(path, self.to_bytes())


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
    names = [name for name in values if name not in {"epoch", SECONDS, "steps", "step_losses"}]
    records, offset = [], 0
    for i, epoch in enumerate(values["epoch"]):
        count = values["steps"][i]
        records.append(EpochRecord(epoch, {name: values[name][i] for name in names},
                                   values["step_losses"][offset: offset + count], values[SECONDS][i]))
        offset += count
    return records


@dataclass(frozen=True)
class Resumption:
    """What a start does with the checkpoint it found, and why."""

    checkpoint: Checkpoint | None  # the state to resume from, if any
    why: str
    set_aside: bool  # the file holds an unfinished training this start will not continue


def read(path: Path) -> bytes | None:
    """The checkpoint file's bytes, or None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def decide(raw: bytes | None, path: Path, expected: dict[str, str], epochs: int) -> Resumption:
    """Whether the checkpoint ``raw`` (read from ``path``) is resumed, set aside, or replaced."""
    if raw is None:
        return Resumption(None, "no checkpoint", False)
    try:
        checkpoint = Checkpoint.from_bytes(raw, path)
    except ModelFileError as exc:
        return Resumption(None, f"unreadable checkpoint: {exc}", True)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        return Resumption(None, f"unreadable checkpoint {path} ({type(exc).__name__}: {exc})", True)
    finished = Resumption(None, f"checkpoint {path} is of a finished training; starting afresh", False)
    # The fingerprint first: "finished" by today's epochs said that 60 of 100 epochs, after a change
    # to epochs: 50, were a finished training, and the unfinished one was overwritten, not set aside.
    if checkpoint.fingerprint != expected:
        if checkpoint.finished:
            return finished
        found = checkpoint.fingerprint if isinstance(checkpoint.fingerprint, dict) else {}
        changed = [name for name in expected if found.get(name) != expected[name]]
        planned = f" of {checkpoint.epochs}" if checkpoint.epochs else ""
        return Resumption(None, f"checkpoint {path} (epoch {checkpoint.epoch}{planned}) was trained with other "
                                f"{', '.join(changed)}", True)
    if checkpoint.finished or checkpoint.epoch >= epochs:
        return finished
    return Resumption(checkpoint, f"resuming from {path} after epoch {checkpoint.epoch} of {epochs}", False)


def set_aside(path: Path) -> Path:
    """Rename an unfinished training's checkpoint out of the way, keeping it; returns its new path."""
    kept = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(kept)
    return kept
