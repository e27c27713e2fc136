"""Whether a dataset's processed data is the committed pipeline's: the split the champion lives on.

The registry's ``champion`` is chosen among versions scored on one split, the one the committed
pipeline produces. A dataset's processed data is that split when what makes it is what ``HEAD``
commits: its ``data.<dataset>`` params equal those of ``HEAD``'s ``params.yaml``, and the code its
``download`` and ``preprocess`` stages depend on (their deps in ``dvc.yaml``) has no uncommitted
change. An edit of ``params.yaml`` not yet committed, ``dvc exp run -S data...`` in the workspace,
and a queued or ``--temp`` experiment (DVC runs it in a git checkout of its baseline commit with
the experiment's params applied as changes) all make another split.

Everything is asked of git in the stage's own directory: in a queued experiment that is DVC's
copy, whose ``HEAD`` is the experiment's baseline.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bplab.data import catalog
from bplab.params.yaml12 import read_yaml
from bplab.stage_deps import code_deps

_STAGES = ("download", "preprocess")  # the stages whose outputs make data/processed/<dataset>
_FALLBACK_CODE = ("stages", "src")  # when dvc.yaml cannot be read: any code change counts


@dataclass(frozen=True)
class SplitOrigin:
    """Whether the processed data is the committed pipeline's, and why not (for messages)."""

    committed: bool
    why: str


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


def code_dependencies(dataset: str, root: Path) -> list[str]:
    """The files and folders under version control that ``download@<dataset>`` and
    ``preprocess@<dataset>`` depend on, as ``dvc.yaml`` lists them (``${item}`` resolved)."""
    paths: list[str] = []
    for stage in _STAGES:
        found = code_deps(root, stage, {"item": dataset})
        if found is None:
            return list(_FALLBACK_CODE)
        paths += [path for path in found if path not in paths]
    return paths or list(_FALLBACK_CODE)


def _committed_section(dataset: str, root: Path, model: type[BaseModel]) -> tuple[BaseModel | None, str]:
    """``data.<dataset>`` of HEAD's params.yaml, validated, or None and why it cannot be had."""
    shown = _git(root, "show", "HEAD:./params.yaml")
    if shown is None or shown.returncode != 0:
        return None, "HEAD has no params.yaml"
    try:
        section = (read_yaml(shown.stdout) or {}).get("data", {}).get(dataset)
        return model.model_validate(section if section is not None else {}), ""
    except (yaml.YAMLError, AttributeError, ValidationError):
        return None, f"HEAD's params.yaml has no valid data.{dataset}"


def origin(dataset: str, settings: Any, root: Path = Path(".")) -> SplitOrigin:
    """Whether ``data/processed/<dataset>``, made with ``settings`` (``params.data.<dataset>``), is
    the committed pipeline's split. Outside git, or before the first commit, every split is."""
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if head is None or head.returncode != 0:
        return SplitOrigin(True, "no git commit to compare with")
    committed, why = _committed_section(dataset, root, catalog.dataset(dataset).params)
    if committed is None:
        return SplitOrigin(False, why)
    if committed.model_dump(mode="json") != settings.model_dump(mode="json"):
        return SplitOrigin(False, f"data.{dataset} in params.yaml differs from HEAD's")
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *code_dependencies(dataset, root))
    changed = [line[3:] for line in (status.stdout.splitlines() if status and status.returncode == 0 else ["?? (git)"])]
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return SplitOrigin(False, f"uncommitted changes in its code: {shown}")
    return SplitOrigin(True, "made by the committed params and code")
