"""The ``integration`` tier: real processes, servers and dvc commands, on small inputs.

Every test under this folder carries the ``integration`` marker (``pytest -m integration``), set here so that
a new test file cannot forget it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``integration`` (the hook sees every item; only ours are marked)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
