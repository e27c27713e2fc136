"""The ``unit`` tier: in-process tests: no child process, no server (a sqlite MLflow store in tmp_path is fine).

Every test under this folder carries the ``unit`` marker (``pytest -m unit``), set here so that
a new test file cannot forget it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``unit`` (the hook sees every item; only ours are marked)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)
