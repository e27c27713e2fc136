"""``bplab gc``'s rules: which runs, registry versions and logged models go, which stay, and why.

A registry version stays when it holds an alias (``champion`` or any other) or is one of the last
``keep_versions`` of its model; the others go. A run goes when it was deleted (in the UI) or
failed or was killed more than ``older_than_days`` ago; every run behind a version that stays is
kept whatever it is (a champion whose run failed after registering stays the champion, with its
run). A logged model goes with its run, unless a version that stays registers it. Plain records
in, verdicts out: nothing here reads a store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from bplab.tracking.cleanup import RunFacts, Survey, VersionFacts

RUN, VERSION, LOGGED_MODEL = "run", "registry version", "logged model"
ENDED_BADLY = ("FAILED", "KILLED")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Verdict:
    """One thing ``bplab gc`` removes or keeps, and why."""

    kind: str  # RUN, VERSION, LOGGED_MODEL (and "DVC cache object", from bplab.commands.dvc_cache)
    ident: str  # a run or logged model id, "<model> v<n>", a cache path
    remove: bool
    why: str
    size: int | None = None  # bytes, where known
    version: tuple[str, int] | None = None  # a registry version's (registered model, number)


def version_label(version: VersionFacts) -> str:
    """``mnist v3 @champion``: a version as the tables show it."""
    return f"{version.name} v{version.version}" + "".join(f" @{alias}" for alias in version.aliases)


def _version_verdicts(versions: Iterable[VersionFacts], keep_last: int) -> list[tuple[VersionFacts, Verdict]]:
    by_model: dict[str, list[VersionFacts]] = {}
    for version in versions:
        by_model.setdefault(version.name, []).append(version)
    verdicts = []
    for name, found in sorted(by_model.items()):
        newest_first = sorted(found, key=lambda v: -v.version)
        last = newest_first[:keep_last]
        shown = ", ".join(f"v{v.version}" for v in last) or "none"
        for version in newest_first:
            ident = f"{name} v{version.version}"
            if version.aliases:
                why = f"holds {', '.join('@' + alias for alias in version.aliases)}"
            elif version in last:
                why = f"one of the last {keep_last} versions of {name}"
            else:
                why = f"no alias, older than the last {keep_last} versions of {name} ({shown})"
            verdicts.append((version, Verdict(VERSION, ident, not (version.aliases or version in last), why,
                                              version=(name, version.version))))
    return verdicts


def _when(start_ms: int | None, now_ms: int) -> str:
    if start_ms is None:
        return "start time unknown"
    started = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).strftime("%Y-%m-%d")
    return f"started {started}, {(now_ms - start_ms) / DAY_MS:.0f} days ago"


def _removal_rule(run: RunFacts, now_ms: int, older_than_days: int) -> tuple[bool, str] | None:
    """(remove?, why) when a rule concerns ``run``; ``None`` for a run nothing concerns (kept, unlisted)."""
    if run.deleted:
        return True, "deleted in the MLflow UI (or by the API)"
    if run.status not in ENDED_BADLY:
        return None
    old = run.start_time is not None and now_ms - run.start_time > older_than_days * DAY_MS
    limit = f"{'over' if old else 'within'} {older_than_days} days"
    return old, f"{run.status}, {_when(run.start_time, now_ms)} ({limit})"


def _run_verdicts(runs: Iterable[RunFacts], kept_versions: dict[str, str], now_ms: int,
                  older_than_days: int) -> list[Verdict]:
    verdicts = []
    for run in sorted(runs, key=lambda r: (r.experiment, r.start_time or 0, r.run_id)):
        rule = _removal_rule(run, now_ms, older_than_days)
        if rule is None:
            continue
        remove, why = rule
        what = f"{run.experiment}/{run.name}: {why}"
        if run.run_id in kept_versions and remove:
            why = f"{what}, but it is the run of {kept_versions[run.run_id]}"
            verdicts.append(Verdict(RUN, run.run_id, False, why))
        else:
            verdicts.append(Verdict(RUN, run.run_id, remove, what))
    return verdicts


def decide(survey: Survey, now_ms: int, older_than_days: int, keep_last: int) -> list[Verdict]:
    """The verdicts on ``survey``: each registry version, each run a rule concerns, and the logged
    models of the runs that go. Runs no rule concerns (finished, running) stay and are not listed."""
    versions = _version_verdicts(survey.versions, keep_last)
    kept = [version for version, verdict in versions if not verdict.remove]
    kept_runs = {v.run_id: version_label(v) for v in sorted(kept, key=lambda v: (v.name, -v.version)) if v.run_id}
    runs = _run_verdicts(survey.runs, kept_runs, now_ms, older_than_days)
    leaving = {verdict.ident for verdict in runs if verdict.remove}
    registered = {v.model_id: version_label(v) for v in kept if v.model_id}
    models = [Verdict(LOGGED_MODEL, model.model_id, model.model_id not in registered,
                      f"the model of run {model.run_id}, which goes" if model.model_id not in registered
                      else f"registered as {registered[model.model_id]}")
              for model in survey.logged_models if model.run_id in leaving]
    return [verdict for _, verdict in versions] + runs + models


def aliased_runs(survey: Survey) -> list[tuple[str, str, str, str | None]]:
    """(label, registered model, run id, git commit) of the run behind each version that holds an
    alias: the runs whose data the DVC cache keeps whatever ``dvc gc``'s scope says."""
    commits = {run.run_id: run.git_commit for run in survey.runs}
    return [(version_label(v), v.name, v.run_id, commits.get(v.run_id))
            for v in sorted(survey.versions, key=lambda v: (v.name, v.version)) if v.aliases and v.run_id]
