"""The ``e2e`` tier: the pipeline's stages chained by dvc in a repository copy, the UI in a browser, the fault campaign.

Every test under this folder carries the ``e2e`` marker (``pytest -m e2e``), set here so that
a new test file cannot forget it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``e2e`` (the hook sees every item; only ours are marked)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
