"""The ``integration`` tier: real processes, servers and dvc commands, on small inputs. Its tests carry
the ``integration`` marker (``pytest -m integration``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tiers import mark_folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``integration``."""
    mark_folder(items, Path(__file__).parent, "integration")
