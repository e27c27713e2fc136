"""From a recorded training run back to a rerun: ``bplab reproduce <run_id>``.

Every training run logs, under ``reproduce/``, the ``params.yaml`` it ran with, its resolved
variant params, ``dvc.lock`` as it stood and, when the tree was dirty, ``git status``; its tags
hold the git commit and ``git_dirty``. Reproducing a run turns the params that shaped it (the top
level ``seed``, ``device`` and ``tracking``, ``train.<variant>`` and ``data.<dataset>``) into a
DVC experiment, ``dvc exp run -S <key>=<value> ... train@<variant> evaluate@<variant>``, forced
so that it really trains, and sets the new run's final metrics beside the original's. On the same
commit, on a CPU, they are equal to the last digit. The settings are in Hydra's override syntax,
which DVC parses: ``+key=`` adds a key today's params.yaml lacks, and a sub-section that is null
(or missing) today is made an empty mapping and then set key by key.

It refuses (exit 2, one line) what it could not prove: a run that did not finish, or that has no
metric a rerun could match; and a value DVC would resolve rather than set (an OmegaConf
interpolation, ``${oc.env:...}``, which could carry a secret into a download URL).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bplab.errors import BplabError
from bplab.params.metrics import SECONDS
from bplab.params.yaml12 import read_yaml
from bplab.pipeline.process import this_environment_first
from bplab.sweep import dvc_queue
from bplab.sweep.dvc_queue import KEY_PART, hydra_name, hydra_value
from bplab.tracking import queries, store

# Metrics that differ between any two runs of the same training: wall times and the machine's
# samples (the soak and the resume tests leave them out too).
UNREPEATABLE = (SECONDS, "system/")
# The params files a reproduction sets from the run's own; other changes are reported, not redone.
RECORDED_FILES = {"params.yaml", "dvc.lock"}
INTERPOLATION = "${"  # OmegaConf resolves it when DVC writes -S values: ${oc.env:VAR} reads the environment


class ReproduceError(BplabError):
    """The run cannot be reproduced here as asked (unknown run, another commit, no record)."""


@dataclass(frozen=True)
class RunRecord:
    """What a training run recorded of how it was made."""

    run_id: str
    variant: str
    dataset: str
    commit: str | None
    changes: list[str]  # git status --porcelain lines, when the tree was dirty
    params: dict[str, Any]  # its params.yaml
    metrics: dict[str, float]


def _finished_run(client: Any, run_id: str) -> Any:
    """The MLflow run ``run_id``, if it is a training run that finished with metrics to compare."""
    run = queries.training_run(client, run_id)
    # A stopped or running run's last metrics are those of some epoch, not a result a rerun should match.
    if run.info.status != "FINISHED":
        raise ReproduceError(f"run {run_id} did not finish (its status is {run.info.status}): it has no final "
                             "metrics a rerun could be compared with")
    if not comparable(run.data.metrics):
        raise ReproduceError(f"run {run_id} has no metric to compare a rerun with (only wall times and system "
                             "samples, or none)")
    return run


def recorded(run_id: str) -> RunRecord:
    """The run's record, or a :class:`ReproduceError` saying what is missing."""
    client = store.client(store.tracking_uri())
    run = _finished_run(client, run_id)
    tags = run.data.tags
    text = queries.artifact_text(client, run_id, "reproduce/params.yaml")
    if text is None:
        raise ReproduceError(f"run {run_id} has no reproduce/params.yaml: it was made before runs "
                             "recorded how to rerun them")
    try:  # as the stages read params (YAML 1.2): DVC writes 1e-05, which YAML 1.1 reads as a string
        params = read_yaml(text)
    except yaml.YAMLError:
        params = None
    if not isinstance(params, dict):
        raise ReproduceError(f"run {run_id}'s reproduce/params.yaml is not a YAML mapping")
    changes: list[str] = []
    if tags.get("git_dirty") == "true":
        status = queries.artifact_text(client, run_id, "reproduce/git_status.txt")
        changes = status.splitlines() if status is not None else ["(not recorded)"]
    return RunRecord(run_id, tags["variant"], tags["dataset"], tags.get("git_commit"), changes, params,
                    dict(run.data.metrics))


def comparable(metrics: dict[str, float]) -> list[str]:
    """The names of ``metrics`` a rerun must match: all but :data:`UNREPEATABLE` ones, sorted."""
    return sorted(k for k in metrics if not k.startswith(UNREPEATABLE))


_MISSING = object()


def _differences(recorded: Any, present: Any, key: str) -> tuple[dict[str, Any], list[str]]:
    """The settings that turn ``present`` into ``recorded`` under ``key``, and the keys present now
    that the run did not have. A key missing now is added, ``+key`` (plain ``key=`` only changes a
    key that exists). A mapping is set key by key, after an empty one where there is none now:
    Hydra refuses to merge new keys into a mapping, and its ``{name:value}`` syntax reads the name
    ``0`` (a ``param_groups`` layer of a Sequential) as a number. Any other value is set whole."""
    if isinstance(recorded, dict):
        settings: dict[str, Any] = {}
        if not isinstance(present, dict):
            settings[key if present is not _MISSING else f"+{key}"] = {}
            present = {}
        unset = [f"{key}.{k}" for k in present if k not in recorded]
        for k, value in recorded.items():
            more, extra = _differences(value, present.get(k, _MISSING), f"{key}.{hydra_name(k, key, KEY_PART)}")
            settings |= more
            unset += extra
        return settings, unset
    if present is _MISSING:
        return {f"+{key}": recorded}, []
    # A URL's credentials were redacted when logged; they pick a source, not the data (checksummed).
    if recorded == present or "***" in str(recorded):
        return {}, []
    return {key: recorded}, []


def overrides(run: RunRecord, current: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ``-S`` settings that give ``current`` params.yaml the run's values where they shaped it
    (``seed``, ``device``, ``tracking``, ``train.<variant>``, ``data.<dataset>``), and the keys
    that cannot be set back (present now, absent then). A setting's key is the dotted key, with
    Hydra's ``+`` where today's params.yaml lacks it."""
    settings: dict[str, Any] = {}
    unset: list[str] = []
    for path in ("seed", "device", "tracking", f"train.{run.variant}", f"data.{run.dataset}"):
        recorded, present = run.params, current
        for part in path.split("."):
            recorded = recorded.get(part, _MISSING) if isinstance(recorded, dict) else _MISSING
            present = present.get(part, _MISSING) if isinstance(present, dict) else _MISSING
        if recorded is not _MISSING:
            more, extra = _differences(recorded, present, path)
            settings |= more
            unset += extra
    return settings, unset


def interpolations(tree: Any, key: str = "") -> list[str]:
    """The dotted keys in ``tree`` whose value (or name) holds an OmegaConf interpolation, ``${``."""
    if isinstance(tree, dict):
        items: Any = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return [key] if INTERPOLATION in str(tree) else []
    found = []
    for name, value in items:
        inner = f"{key}.{name}" if key else str(name)
        found += [inner] if INTERPOLATION in str(name) else interpolations(value, inner)
    return found


def check_interpolations(run: RunRecord, settings: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse what DVC would resolve rather than set: ``dvc exp run -S`` rewrites params.yaml through
    OmegaConf, which resolves every ``${...}`` in it, so ``${oc.env:AWS_SECRET_ACCESS_KEY}`` in a
    mirror URL would send that secret to the mirror. Only the key is named, never the value."""
    for key, value in settings.items():
        found = interpolations(value, key.lstrip("+"))
        if found:
            raise ReproduceError(f"run {run.run_id}'s reproduce/params.yaml holds an interpolation (${{...}}) at "
                                 f"{found[0]}: DVC would resolve it (perhaps to a secret) when setting it; "
                                 "refusing to rerun it")
    found = interpolations(current)
    if found:
        raise ReproduceError(f"params.yaml holds an interpolation (${{...}}) at {found[0]}: `dvc exp run -S` "
                             "would write its resolved value (perhaps a secret) into the file; remove it first")


def check_commit(run: RunRecord, any_commit: bool) -> list[str]:
    """Refuse a run of another commit unless ``any_commit``; the notes to print about the tree."""
    head = store.git_commit()
    notes = []
    if run.commit != head:
        where = f"commit {run.commit[:12]}" if run.commit else "no git commit"
        message = (f"run {run.run_id} was made at {where}; this checkout is at "
                   f"{head[:12] if head else 'no commit'}")
        if not any_commit:
            hint = f"`git checkout {run.commit[:12]}` first, or " if run.commit else ""
            raise ReproduceError(f"{message}: {hint}pass --any-commit to rerun it on this code anyway")
        notes.append(f"{message}: rerunning it on this code (--any-commit)")
    unrecorded = [path for path in (line[3:].strip() for line in run.changes) if path not in RECORDED_FILES]
    if unrecorded:
        notes.append(f"the run was made with uncommitted changes that are not reproduced: {', '.join(unrecorded)}")
    return notes


def experiment_command(run: RunRecord, settings: dict[str, Any], name: str) -> list[str]:
    """The arguments of ``dvc exp run``, forced: unchanged stages would otherwise be skipped, or restored from DVC's
    run cache, and nothing would be retrained. Without a data setting only the variant's two
    stages run (``-s``); with one, upstream stages rerun too."""
    command = ["exp", "run", "-n", name, "-f"]
    if not any(key.lstrip("+").startswith("data.") for key in settings):
        command.append("-s")
    for key, value in settings.items():
        dotted = key.lstrip("+")
        for part in dotted.split("."):
            hydra_name(part, dotted, KEY_PART)
        command += ["-S", f"{key}={hydra_value(value, dotted)}"]
    return [*command, f"train@{run.variant}", f"evaluate@{run.variant}"]


def rerun_metrics(run: RunRecord, name: str) -> dict[str, float]:
    """The final metrics of the training run the experiment ``name`` made."""
    from bplab.tracking.recorder import run_of_dvc_exp

    found = run_of_dvc_exp(run.dataset, name, run.variant)
    if found is None:
        raise ReproduceError(f"the experiment {name} left no MLflow run of {run.variant}")
    return dict(found.data.metrics)


def side_by_side(original: dict[str, float], rerun: dict[str, float]) -> tuple[str, bool]:
    """A table of each metric, original and rerun, and whether all are equal (never with none to
    compare: ``all([])`` would call nothing "equal")."""
    names = comparable(original)
    width = max(map(len, names), default=6)
    lines = [f"{'metric':<{width}}  {'original':>22}  {'reproduced':>22}  same"]
    equal = {key: rerun.get(key) == original[key] for key in names}
    for key in names:
        lines.append(f"{key:<{width}}  {original[key]!r:>22}  {rerun.get(key)!r:>22}  {'yes' if equal[key] else 'NO'}")
    return "\n".join(lines), bool(names) and all(equal.values())


def reproduce(run_id: str, any_commit: bool = False, root: Path | None = None) -> int:
    """Rerun training run ``run_id`` as a DVC experiment; 0 when every metric comes out equal, 1 if not."""
    run = recorded(run_id)
    for note in check_commit(run, any_commit):
        print(f"bplab reproduce: {note}", file=sys.stderr)
    root = root or store.repo_root()
    try:
        current = read_yaml((root / "params.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReproduceError(f"cannot read {root / 'params.yaml'}: {type(exc).__name__}") from None
    settings, unset = overrides(run, current)
    check_interpolations(run, settings, current)
    if unset:
        print(f"bplab reproduce: not in the run's params.yaml, kept as they are now: {', '.join(unset)}",
              file=sys.stderr)
    name = f"reproduce-{run_id[:8]}-{time.strftime('%Y%m%d%H%M%S')}"
    command = experiment_command(run, settings, name)
    print(f"bplab reproduce: dvc {shlex.join(command)}", file=sys.stderr, flush=True)
    dvc = subprocess.run([*dvc_queue.dvc_command(), *command], cwd=root, env=this_environment_first())
    if dvc.returncode != 0:  # its output is on the terminal
        raise ReproduceError(f"the experiment {name} failed (its output is above)")
    table, same = side_by_side(run.metrics, rerun_metrics(run, name))
    print(table)
    print(f"{'every metric is equal to the last digit' if same else 'some metrics differ'} "
          f"(run {run_id} and experiment {name})")
    return 0 if same else 1
