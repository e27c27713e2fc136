"""Reading torch files without running code: the pipeline's only ``torch.load``.

Models, state_dicts and checkpoints travel through DVC remotes and other people's machines, so
a file is data, never a program: ``weights_only=True`` rebuilds tensors, numbers, strings,
containers and the classes a caller allows, and refuses any other global a pickle names.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from bplab.errors import ModelFileError


def load_without_code(path: Path, what: str, allowed: tuple[type, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with ``allowed`` classes besides tensors.

    Raises :class:`ModelFileError` naming ``path`` (and ``what`` it should have held) when the file
    is missing, unreadable, or names a global outside the allowlist.
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except pickle.UnpicklingError as exc:  # a global outside the allowlist, or not a pickle at all
        # torch's message is a page of advice; keep what the file asked for.
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it names {named.group(1)}" if named else "not a file torch.save wrote"
        raise ModelFileError(f"{path}: refused: not {what} ({detail}); loading it could run code") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: unreadable ({exc})") from None
