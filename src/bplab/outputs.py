"""Writing stage outputs so that a failure, an interrupt or a ``kill -9`` never leaves a half-written one.

Files are written to a temporary sibling and renamed into place; folders are filled in a staging
sibling and swapped in. Leftovers of a killed writer (``.<name>.*.part``, ``.<name>.*.tmp``,
``.<name>.*.old``) are removed the next time the same output is written. Outputs get the modes
the user's umask gives any new file or folder, not the private modes of temporary files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_LEFTOVER_SUFFIXES = (".part", ".tmp", ".old")


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any worker thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _remove_leftovers(path: Path) -> None:
    """Delete what a killed writer of ``path`` left beside it."""
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.name.endswith(_LEFTOVER_SUFFIXES):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, content: bytes) -> None:
    """Write ``path`` via a temporary file in the same directory, fsync'd, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(path, text.encode())


def publish_directory(out: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``out`` whole: ``fill`` writes into a staging directory that then replaces it.

    If ``fill`` raises (or the process is interrupted), the staging directory is removed and any
    previous ``out`` is left as it was. The swap renames the previous ``out`` aside before the new
    one is renamed in, so a complete version exists at every instant: a kill between the two
    renames leaves both, the old one as ``.<name>.*.old``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        fill(staging)
        _set_modes(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out.with_name(staging.name.removesuffix(".tmp") + ".old")
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def _set_modes(folder: Path) -> None:
    """The modes a new folder and its files would have under the umask (mkdtemp makes it 0700)."""
    mask = _UMASK
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
