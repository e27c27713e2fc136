"""Where every stage reads and writes, relative to the repository root (the ``outs`` of dvc.yaml).

One home for the layout, so a stage imports the paths it needs, not the module of the stage that
writes them.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(".")
RUN_FILE = "run.json"
WHOLE_MODEL_FILE = "model.pt"
STATE_DICT_FILE = "state_dict.pt"


def raw_dir(dataset: str, root: Path = HERE) -> Path:
    """``data/raw/<dataset>``: what ``download@<dataset>`` writes."""
    return root / "data" / "raw" / dataset


def processed_dir(dataset: str, root: Path = HERE) -> Path:
    """``data/processed/<dataset>``: what ``preprocess@<dataset>`` writes."""
    return root / "data" / "processed" / dataset


def model_dir(variant: str, root: Path = HERE) -> Path:
    """``models/<variant>``: the whole model, its state_dict and ``run.json``, from ``train@<variant>``."""
    return root / "models" / variant


def history_file(variant: str, root: Path = HERE) -> Path:
    """``history/<variant>.csv``: per-epoch metrics of ``train@<variant>``, a DVC plots file."""
    return root / "history" / f"{variant}.csv"


def checkpoint_file(variant: str, root: Path = HERE) -> Path:
    """``checkpoints/<variant>.pt``: the resumable state of ``train@<variant>``."""
    return root / "checkpoints" / f"{variant}.pt"


def metrics_file(variant: str, root: Path = HERE) -> Path:
    """``metrics/<variant>.json``: the test metrics of ``evaluate@<variant>``, DVC metrics."""
    return root / "metrics" / f"{variant}.json"


def plots_dir(variant: str, root: Path = HERE) -> Path:
    """``plots/<variant>``: the pictures of ``evaluate@<variant>``."""
    return root / "plots" / variant
