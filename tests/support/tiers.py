"""The tiers' markers: every test under a tier's folder carries its marker, set by that folder's
conftest.py through :func:`mark_folder`, so that a new test file cannot forget it."""

from __future__ import annotations

from pathlib import Path

import pytest


def mark_folder(items: list[pytest.Item], folder: Path, marker: str) -> None:
    """Add ``marker`` to the collected tests under ``folder`` (the hook that calls this sees every item)."""
    for item in items:
        if folder in item.path.parents:
            item.add_marker(getattr(pytest.mark, marker))
