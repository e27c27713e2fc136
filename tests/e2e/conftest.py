"""The ``e2e`` tier: the pipeline's stages chained by dvc in a repository copy, the UI in a browser,
the fault campaign. Its tests carry the ``e2e`` marker (``pytest -m e2e``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tiers import mark_folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``e2e``."""
    mark_folder(items, Path(__file__).parent, "e2e")
