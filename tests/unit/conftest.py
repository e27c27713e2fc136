"""The ``unit`` tier: in-process tests: no child process, no server (a sqlite MLflow store in tmp_path
is fine). Its tests carry the ``unit`` marker (``pytest -m unit``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tiers import mark_folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``unit``."""
    mark_folder(items, Path(__file__).parent, "unit")
