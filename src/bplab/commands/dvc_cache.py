"""DVC's side of ``bplab gc``: the cache objects that no branch, tag, experiment or the workspace uses.

``dvc gc --workspace --all-branches --all-tags --all-experiments`` keeps what the workspace, the tip
of every branch, every tag and every experiment use; ``--dry`` lists the rest (one ``Removing
<path>`` line per object), which is what ``bplab gc`` shows and, with ``--yes``, removes. A
champion's data (its dataset's raw and processed data, as its run's recorded ``dvc.lock`` hashes
them) may be of a commit that no tip holds any more: then that commit is kept as well (``--rev``),
and where one ``--rev`` cannot keep every champion's data, the cache is left as it is, saying
which champion and what to do.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml

from bplab.sweep import dvc_queue
from bplab.tracking.retention import Verdict

SCOPE = ("--workspace", "--all-branches", "--all-tags", "--all-experiments")
CACHE_OBJECT = "DVC cache object"
REMOVING = "Removing "
WHY = "no branch tip, tag, experiment or the workspace uses it"


@dataclass(frozen=True)
class Champion:
    """A version that holds an alias, with the data its run recorded."""

    label: str  # "mnist v3 @champion"
    commit: str | None
    digests: frozenset[str]  # its data's hashes in its recorded dvc.lock (``<md5>.dir`` for a folder)


@dataclass(frozen=True)
class CachePlan:
    """What ``dvc gc`` would remove (``unused``), with which extra ``rev``; or why it must not run."""

    unused: tuple[Verdict, ...]
    rev: str | None = None
    blocked: str | None = None


def lock_digests(text: str | None, paths: Collection[str]) -> frozenset[str]:
    """The hashes a ``dvc.lock``'s text records for the outputs at ``paths`` (``data/raw/boston``...);
    empty for none or an unreadable lock."""
    try:
        lock = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return frozenset()
    stages = (lock.get("stages") if isinstance(lock, dict) else None) or {}
    outs = [out for stage in stages.values() if isinstance(stage, dict) for out in stage.get("outs") or []]
    return frozenset(str(out.get("md5") or out.get("hash")) for out in outs
                     if isinstance(out, dict) and out.get("path") in paths and (out.get("md5") or out.get("hash")))


def gc_arguments(rev: str | None, cloud: bool, dry: bool) -> list[str]:
    """``dvc gc``'s arguments for that scope; ``-f`` because ``bplab gc --yes`` was the confirmation."""
    return ["gc", *SCOPE, *(["--rev", rev] if rev else []), *(["--cloud"] if cloud else []),
            *(["--dry"] if dry else []), "--force"]


def _digest(path: str) -> str:
    """``ab12...`` of a cache path ``.../files/md5/ab/12...`` (a ``.dir`` suffix kept, as dvc.lock writes it)."""
    parts = path.replace("\\", "/").rstrip("/").split("/")
    return parts[-2] + parts[-1]


def _shown(path: Path, root: Path) -> str:
    """A cache path relative to the repository when it is inside (a remote's as DVC prints it)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def unused(root: Path, rev: str | None, cloud: bool) -> tuple[Verdict, ...]:
    """The objects ``dvc gc`` would remove from the cache (and the remote, with ``cloud``)."""
    lines = dvc_queue.dvc(root, *gc_arguments(rev, cloud, dry=True)).splitlines()
    paths = [Path(line.removeprefix(REMOVING).strip()) for line in lines if line.startswith(REMOVING)]
    why = WHY + (f" nor commit {rev[:10]}" if rev else "")
    return tuple(Verdict(CACHE_OBJECT, _shown(path, root.resolve()), True, why,
                         path.stat().st_size if path.is_file() else None) for path in paths)


def _taken(objects: tuple[Verdict, ...], champions: list[Champion]) -> list[Champion]:
    gone = {_digest(verdict.ident) for verdict in objects}
    return [champion for champion in champions if champion.digests & gone]


def plan(root: Path, champions: list[Champion], cloud: bool) -> CachePlan:
    """What ``dvc gc`` removes with the scope, keeping every champion's data; blocked when it cannot."""
    objects = unused(root, None, cloud)
    taken = _taken(objects, champions)
    if not taken:
        return CachePlan(objects)
    commits = {champion.commit for champion in taken}
    if len(commits) == 1 and None not in commits:
        rev = commits.pop()
        try:
            with_rev: tuple[Verdict, ...] | None = unused(root, rev, cloud)
        except dvc_queue.DvcFailed:  # a commit this clone does not have
            with_rev = None
        if with_rev is not None and not _taken(with_rev, champions):
            return CachePlan(with_rev, rev=rev)
    names = ", ".join(f"{c.label} (commit {(c.commit or 'unknown')[:10]})" for c in taken)
    return CachePlan((), blocked=f"dvc gc would remove the data of {names}, which no branch tip, tag or "
                                 "experiment holds: the DVC cache is left as it is. Tag those commits "
                                 "(git tag <name> <commit>) and run bplab gc again")


def collect(root: Path, cache: CachePlan, cloud: bool) -> None:
    """Run the ``dvc gc`` that :func:`plan` chose."""
    if cache.blocked is None and cache.unused:
        dvc_queue.dvc(root, *gc_arguments(cache.rev, cloud, dry=False))
