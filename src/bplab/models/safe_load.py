"""Reading torch files without running code: the pipeline's only ``torch.load``, and the loaders of
the two saved forms of a model.

Models, state_dicts and checkpoints travel through DVC remotes and other people's machines, so
a file is data, never a program: ``weights_only=True`` rebuilds tensors, numbers, strings,
containers and the classes a caller allows, and refuses any other global a pickle names.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bplab.errors import ModelFileError

if TYPE_CHECKING:
    from torch import nn


def load_without_code(path: Path, what: str, allowed: tuple[type, ...] = (), data: bytes | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with ``allowed`` classes besides tensors.

    ``data``, when given, is the file's content already read (``path`` then only names it). The
    CPU, because a file written on a GPU machine must load on any machine; callers move tensors
    to their device. Raises :class:`ModelFileError` naming ``path`` (and ``what`` it should have
    held) when the file is missing, unreadable, or names a global outside the allowlist.
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path if data is None else io.BytesIO(data), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except pickle.UnpicklingError as exc:  # a global outside the allowlist, or not a pickle at all
        # torch's message is a page of advice; keep what the file asked for.
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it names {named.group(1)}" if named else "not a file torch.save wrote"
        raise ModelFileError(f"{path}: refused: not {what} ({detail}); loading it could run code") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: unreadable ({exc})") from None


def load_whole_model(path: Path) -> nn.Module:
    """The whole model that ``torch.save(model)`` wrote to ``path``, on the CPU, in eval mode.

    Loaded with ``weights_only=True`` and :data:`bplab.models.networks.WHOLE_MODEL_CLASSES` as the only
    allowed classes: nothing in the file can run code. Raises :class:`ModelFileError` naming the
    file when it is missing, refused or not a model.
    """
    from bplab.models.networks import WHOLE_MODEL_CLASSES

    model = load_without_code(path, "a model built from this project's classes", WHOLE_MODEL_CLASSES)
    if not isinstance(model, WHOLE_MODEL_CLASSES):
        raise ModelFileError(f"{path}: refused: holds a {type(model).__name__}, not one of this project's models")
    return model.eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict that ``torch.save(model.state_dict())`` wrote to ``path``, on the CPU.

    Tensors and containers only (``weights_only=True``); raises :class:`ModelFileError` naming the
    file when it is missing, refused or not a mapping of names to tensors.
    """
    state = load_without_code(path, "a plain state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: refused: not a mapping of parameter names to tensors")
    return state
