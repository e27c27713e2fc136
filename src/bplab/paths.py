"""Where every stage reads and writes, relative to the repository root (the ``outs`` of dvc.yaml).

One home for the layout, so a stage imports the paths it needs, not the module of the stage that
writes them.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(".")
# The longest variant or dataset name. Names make file names (history/<variant>.csv,
# models/<variant>/, data/raw/<dataset>/, ...), and one file name holds at most 255 bytes (Linux,
# macOS). The most a file name adds to a name is 29 bytes (checkpoints/<variant>.pt.set-aside-
# 20250101T120000) and the atomic writer's temporaries (.<variant>.json.XXXXXXXX.part) 20: 128
# leaves room for those and for what may come, and keeps run names within MLflow's 250 characters.
NAME_LIMIT = 128
NAME_BYTES = 255
RUN_FILE = "run.json"
WHOLE_MODEL_FILE = "model.pt"
STATE_DICT_FILE = "state_dict.pt"


def name_too_long(name: str) -> str:
    """Why ``name`` is refused as a variant or dataset name when it is over :data:`NAME_LIMIT`."""
    return (f"name {name[:24]!r}... is {len(name.encode())} bytes long: at most {NAME_LIMIT}, as it names files "
            f"such as checkpoints/<name>.pt.set-aside-<time> and a file name holds {NAME_BYTES} bytes")


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
