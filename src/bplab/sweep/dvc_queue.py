"""DVC experiments the way ``bplab sweep`` runs them: queued by name, run by DVC's queue workers,
read back from git.

``dvc exp run --queue -n NAME -S key=value ... targets`` stashes an experiment, ``dvc queue start
-j J`` runs up to J at a time, each in its own copy under ``.dvc/tmp/exps``, and ``dvc queue
status`` lists them by name (Queued, Running, Success, Failed). A finished experiment is a git
commit under ``refs/exps/<baseline[:2]>/<baseline[2:]>/<NAME>``, where the baseline is the commit
it was queued on: its metrics and params are read from there with ``git show``, which costs
milliseconds where ``dvc exp show`` collects every experiment. The queue workers run detached, so
experiments go on when the process that queued them dies; a later sweep picks them up by name.

Also how a ``-S key=value`` is written (:func:`hydra_value`), for the sweep's trials and for
``bplab reproduce``'s reruns alike.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from bplab.errors import BplabError
from bplab.pipeline.process import this_environment_first

_STAGE_ERROR = re.compile(r"[\w-]+@[\w-]+: error: ")  # how a bplab stage reports an error it understands
State = Literal["pending", "done", "failed", "missing"]


# How `dvc exp run -S key=value` is written: Hydra's override grammar, which DVC parses. The names
# it reads as strings: in a dotted key also a number (a list index or a Sequential's layer), in a
# {name:value} mapping only an identifier.
KEY_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|0|[1-9][0-9]*")
DICT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
NOT_STRINGS = {"null", "true", "false", "inf", "nan"}  # names Hydra reads as None, a bool or a float


class NotSettable(BplabError):
    """A value or key that ``dvc exp run -S`` cannot set as it is."""


def hydra_value(value: Any, key: str) -> str:
    """``value`` in Hydra's override grammar, which ``dvc exp run -S`` parses (not JSON: its dict
    keys are bare names): ``null``, ``true``, numbers as Python writes them (``1e-05``, which
    Hydra reads as a float), strings quoted unless a plain name (so ``a,b`` is no sweep and
    ``1e-05`` stays a string), ``[...]`` and ``{name:value,...}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(item, f"{key}.{i}") for i, item in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{hydra_name(name, key)}:{hydra_value(item, f'{key}.{name}')}"
                              for name, item in value.items()) + "}"
    raise NotSettable(f"{key}: a {type(value).__name__} value cannot be set with `dvc exp run -S`")


def hydra_name(name: Any, key: str, pattern: re.Pattern[str] = DICT_NAME) -> str:
    """``name``, a key under ``key``, if Hydra reads it back as this string; else a :class:`ReproduceError`."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise NotSettable(f"{key}: the key {name!r} cannot be set with `dvc exp run -S` (a name of letters, "
                             "digits, _ and -, not starting with a digit unless all digits)")
    return name


def _quoted(text: str) -> str:
    """``text`` as Hydra reads it back: bare when it is a name Hydra takes for a string (``step``,
    ``cpu``), else single-quoted. Hydra un-escapes only backslashes before a quote: a quote inside
    becomes ``\\'`` after its backslashes are doubled, and so do backslashes at the end."""
    if DICT_NAME.fullmatch(text) and text.lower() not in NOT_STRINGS:
        return text
    body = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m[1] * 2, body)
    return f"'{body}'"



# How DVC reports git's index.lock held by another process (or left by a crashed one).
GIT_INDEX_LOCKED = "the index is locked"
INDEX_LOCK_WAIT = 120.0  # seconds; a lock held longer than this is taken for one a crash left behind


class DvcFailed(BplabError):
    """A ``dvc`` command exited non-zero; the message is its last error line."""


def dvc_command() -> list[str]:
    """``dvc`` of this environment, waiting for DVC's repository lock."""
    beside = Path(sys.executable).with_name("dvc")  # this environment's DVC, whether or not PATH has it
    # Wait for DVC's repository lock rather than fail at once: two sweeps on one repository, or a
    # queue worker collecting its result, hold it for moments at a time.
    return [str(beside) if beside.is_file() else "dvc", "--wait-for-lock"]


def _last_error(output: str) -> str:
    """The most telling line of a DVC command's output: its last ``ERROR``/``error`` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1]


def dvc(repo: Path, *args: str, timeout: float = 600, index_lock_wait: float = INDEX_LOCK_WAIT) -> str:
    """Run ``dvc ARGS`` in ``repo``; its standard output, or :class:`DvcFailed` naming its error.

    A command refused because git's index is locked is run again for up to ``index_lock_wait``
    seconds: ``--wait-for-lock`` waits for DVC's own lock only, while ``dvc exp run --queue``
    stashes through git's index, which another sweep queueing a trial, or a queue worker
    collecting one, holds for moments at a time. A refused command has queued nothing."""
    deadline = time.monotonic() + index_lock_wait
    pause = 0.2
    while True:
        # DVC's queue workers start `dvc`, and the stages `python`, by name: this environment's go first.
        result = subprocess.run([*dvc_command(), *args], cwd=repo, env=this_environment_first(),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0:
            return result.stdout
        error = _last_error(result.stderr + result.stdout)
        if GIT_INDEX_LOCKED not in error or time.monotonic() + pause > deadline:
            waited = f" (still locked after {index_lock_wait:g} s)" if GIT_INDEX_LOCKED in error else ""
            raise DvcFailed(f"dvc {' '.join(args[:3])} ... exited {result.returncode}: {error}{waited}")
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` in ``repo``, not checked."""
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)


def head(repo: Path) -> str:
    """The commit experiments queued now are based on."""
    found = git(repo, "rev-parse", "HEAD")
    if found.returncode != 0:
        raise DvcFailed(f"{repo} has no git commit to base experiments on: {found.stderr.strip()}")
    return found.stdout.strip()


def enqueue(repo: Path, name: str, overrides: list[str], targets: list[str]) -> None:
    """``dvc exp run --queue -n NAME -S ... TARGETS``."""
    sets = [arg for value in overrides for arg in ("-S", value)]
    dvc(repo, "exp", "run", "--queue", "-n", name, *sets, *targets)


def push(repo: Path, remote: str, name: str) -> None:
    """``dvc exp push REMOTE NAME``: the experiment's commit to git remote ``remote``, its
    outputs to the default DVC remote, so that any clone can ``dvc exp pull`` and apply it."""
    dvc(repo, "exp", "push", remote, name)


def start(repo: Path, jobs: int) -> None:
    """``dvc queue start -j JOBS``: workers for the queue, up to ``jobs`` of them (running ones count)."""
    dvc(repo, "queue", "start", "-j", str(jobs))


def parse_statuses(listing: str) -> dict[str, str]:
    """``dvc queue status``'s table as ``{name: status}``; a name listed twice keeps its last row."""
    found = {}
    for line in listing.splitlines():
        words = line.split()  # Task  Name  Created (one or more words)  Status
        if len(words) >= 4 and words[-1] in {"Queued", "Running", "Success", "Failed"}:
            found[words[1]] = words[-1]
    return found


def statuses(repo: Path) -> dict[str, str]:
    """The queue's experiments by name: Queued, Running, Success or Failed."""
    return parse_statuses(dvc(repo, "queue", "status"))


def exp_ref(baseline: str, name: str) -> str:
    """The git ref of experiment ``name`` queued on commit ``baseline`` (DVC's layout)."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def exists(repo: Path, baseline: str, name: str) -> bool:
    """Whether experiment ``name`` of ``baseline`` has finished and been collected."""
    return git(repo, "rev-parse", "--verify", "--quiet", exp_ref(baseline, name)).returncode == 0


def state(repo: Path, baseline: str, name: str, listed: dict[str, str] | None) -> State:
    """Where experiment ``name`` stands: done (its commit exists), failed, pending (queued or
    running), or missing: neither queued nor done, or a success whose commit is not there.
    ``listed`` is :func:`statuses`; without it, anything but done is pending."""
    if exists(repo, baseline, name):
        return "done"
    if listed is None:
        return "pending"
    status = listed.get(name)
    if status == "Failed":
        return "failed"
    return "missing" if status in {None, "Success"} else "pending"


def read_json(repo: Path, baseline: str, name: str, path: str) -> dict:
    """The JSON file ``path`` of a finished experiment."""
    shown = git(repo, "show", f"{exp_ref(baseline, name)}:{path}")
    if shown.returncode != 0:
        raise DvcFailed(f"experiment {name} has no {path}: {shown.stderr.strip()}")
    return json.loads(shown.stdout)


def failure(repo: Path, name: str) -> str:
    """Why queued experiment ``name`` failed: the failing stage's own one-line error
    (``train@V: error: ...``) from ``dvc queue logs``, else DVC's last error line."""
    try:
        logs = dvc(repo, "queue", "logs", name)
    except DvcFailed as exc:
        return str(exc)
    stage_errors = [line.strip() for line in logs.splitlines() if _STAGE_ERROR.match(line.strip())]
    return stage_errors[-1] if stage_errors else _last_error(logs)
