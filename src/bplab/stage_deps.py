"""What dvc.yaml says a stage's code is: the deps it lists, for one item of its ``foreach``.

DVC reruns a stage when one of these changes (tests/integration/test_dvc_contract.py checks them against the
stage's imports). The checkpoint's fingerprint of the training code and the check of whether a
split is the committed one read the same list, from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from bplab.params.yaml12 import read_yaml


def code_deps(root: Path, stage: str, values: Mapping[str, str]) -> list[str] | None:
    """The deps of ``stage`` in ``root/dvc.yaml`` outside ``data/``, in their order, each ``${name}``
    of ``values`` resolved (``{"item": "mnist"}``, ``{"key": "mnist_mlp", "item.dataset": "mnist"}``);
    None when dvc.yaml cannot be read."""
    try:
        stages = read_yaml((root / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    definition = stages.get(stage) or {}
    paths: list[str] = []
    for dep in (definition.get("do") or definition).get("deps") or []:
        path = dep if isinstance(dep, str) else next(iter(dep))  # a dep with options is a one-key mapping
        for name, value in values.items():
            path = path.replace(f"${{{name}}}", value)
        if not path.startswith("data/") and path not in paths:
            paths.append(path)
    return paths
