"""``bplab gc``: what nothing references in a team's MLflow store and DVC cache, listed, then removed.

Dry by default: one line per thing it would remove or keeps on purpose (what, which, why), and a
summary; ``--yes`` removes it. The rules are :mod:`bplab.tracking.retention`'s (MLflow) and
:mod:`bplab.commands.dvc_cache`'s (DVC); :mod:`bplab.tracking.cleanup` reads and removes in MLflow.
A version holding an alias (``champion``), its run, its logged model and its data always stay.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bplab.commands import dvc_cache
from bplab.data import catalog
from bplab.errors import BplabError
from bplab.paths import processed_dir, raw_dir
from bplab.tracking import cleanup, retention, store

DEFAULT_DAYS, DEFAULT_KEEP = 7, 3
MLFLOW, DVC = "mlflow", "dvc"
KINDS = (retention.RUN, retention.VERSION, retention.LOGGED_MODEL, dvc_cache.CACHE_OBJECT)


class GcUsageError(BplabError):
    """An option of ``bplab gc`` has a value it cannot use."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab gc``'s options."""
    parser.add_argument("--yes", action="store_true", help="remove what the dry run lists (default: only list it)")
    parser.add_argument("--older-than-days", metavar="N", default=str(DEFAULT_DAYS),
                        help="remove FAILED and KILLED runs that started over N days ago (default: %(default)s)")
    parser.add_argument("--keep-versions", metavar="K", default=str(DEFAULT_KEEP),
                        help="keep the last K versions of each registered model besides the aliased ones "
                             "(default: %(default)s)")
    parser.add_argument("--only", choices=(MLFLOW, DVC),
                        help="only the MLflow store's runs and registry, or only the DVC cache (default: both)")
    parser.add_argument("--cloud", action="store_true",
                        help="also remove the unused objects from the DVC remote (dvc gc --cloud)")
    parser.add_argument("--backend-store-uri", metavar="URI",
                        help="the database of the tracking server MLFLOW_TRACKING_URI names, which `mlflow gc` "
                             "needs to remove deleted runs for good (not needed for a sqlite or SQL store)")


def _count(option: str, text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise GcUsageError(f"{option} {text}: not a whole number of 0 or more")
    return number


def _champions(uri: str, survey: cleanup.Survey) -> list[dvc_cache.Champion]:
    """Each aliased version's data: its dataset's raw and processed data (the registered model is
    named after the dataset), as its run's recorded dvc.lock hashes them."""
    return [dvc_cache.Champion(label, commit, dvc_cache.lock_digests(
                cleanup.recorded_lock(uri, run_id), {raw_dir(dataset).as_posix(), processed_dir(dataset).as_posix()}))
            for label, dataset, run_id, commit in retention.aliased_runs(survey)]


def _size(number: int | None) -> str:
    if number is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return ""


@dataclass(frozen=True)
class Outcome:
    """How the verdicts ended: a dry run (``acted`` False), or removed; with ``collected`` False, the
    runs and logged models of a tracking server were only deleted (its database keeps them)."""

    acted: bool = False
    collected: bool = True

    def action(self, verdict: retention.Verdict) -> str:
        """The first column of ``verdict``'s line."""
        if not verdict.remove:
            return "kept" if self.acted else "keep"
        if not self.acted:
            return "remove"
        if not self.collected and verdict.kind in (retention.RUN, retention.LOGGED_MODEL):
            return "deleted"
        return "removed"


SUMMARY_HEADINGS = {"remove": "would remove", "removed": "removed",
                    "deleted": "deleted on the server, still in its database", "keep": "kept", "kept": "kept"}


def table(verdicts: Sequence[retention.Verdict], outcome: Outcome) -> str:
    """The verdicts as aligned columns: action, what, which, why (removals first)."""
    rows = [(outcome.action(v), v.kind, v.ident, v.why + (f" ({_size(v.size)})" if v.size else ""))
            for v in sorted(verdicts, key=lambda v: not v.remove)]
    if not rows:
        return "nothing to list: no deleted, failed or killed run, no registry version, no unused DVC object\n"
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + f"  {row[3]}\n"
                   for row in rows)


def summary(verdicts: Sequence[retention.Verdict], outcome: Outcome, other_runs: int | None) -> str:
    """One line: how many of each kind go and stay (and how many runs no rule concerns, unless
    the MLflow store was left out)."""
    counts = Counter((outcome.action(v), v.kind) for v in verdicts)
    actions = ["removed", "deleted"] if outcome.acted else ["remove"]
    parts = []
    for action in [*actions, "kept" if outcome.acted else "keep"]:
        listed = ", ".join(f"{counts[action, kind]} {kind}{'s' * (counts[action, kind] != 1)}"
                           for kind in KINDS if counts[action, kind])
        if listed or action != "deleted":
            parts.append(f"{SUMMARY_HEADINGS[action]}: {listed or 'nothing'}")
    freed = sum(v.size or 0 for v in verdicts if v.remove and v.kind == dvc_cache.CACHE_OBJECT)
    if freed:
        parts[0] += f" ({_size(freed)} of DVC cache)"
    if other_runs is not None:
        parts[-1] += f", and {other_runs} other run{'s' * (other_runs != 1)} no rule concerns"
    return "; ".join(parts) + "\n"


def _cache_plan(args: argparse.Namespace, uri: str, survey: cleanup.Survey, root: Path) -> dvc_cache.CachePlan:
    if args.only == MLFLOW:
        return dvc_cache.CachePlan(())
    if not (root / ".dvc").is_dir():
        return dvc_cache.CachePlan((), blocked=f"{root} is not a DVC repository: no DVC cache to collect")
    return dvc_cache.plan(root, _champions(uri, survey), args.cloud)


def run(args: argparse.Namespace) -> int:
    """List (or, with ``--yes``, remove) what nothing references; exit status 0."""
    days, keep = _count("--older-than-days", args.older_than_days), _count("--keep-versions", args.keep_versions)
    uri = store.tracking_uri()
    store.check_reachable(uri)
    survey = cleanup.survey(uri, catalog.known())
    verdicts = [] if args.only == DVC else retention.decide(survey, int(time.time() * 1000), days, keep)
    root = store.repo_root()
    cache = _cache_plan(args, uri, survey, root)
    notes = [cache.blocked] if cache.blocked else []
    if cache.rev:
        notes.append(f"the DVC cache also keeps commit {cache.rev[:10]}, where a champion's data is")
    collected = not args.yes or args.only == DVC or cleanup.remove(uri, _removal(verdicts), args.backend_store_uri)
    if not collected:
        notes.append(f"{store.redact(uri)} is a tracking server: the runs and logged models are deleted there but "
                     "stay in its database until `mlflow gc` runs on it; pass --backend-store-uri (its database)")
    if args.yes:
        dvc_cache.collect(root, cache, args.cloud)
    scope = {MLFLOW: store.redact(uri), DVC: _cache_of(root)}
    print(f"bplab gc: {'removed from' if args.yes else 'dry run (nothing removed; --yes removes) of'} "
          f"{' and '.join(where for name, where in scope.items() if args.only in (None, name))}\n")
    everything = [*verdicts, *cache.unused]
    outcome = Outcome(args.yes, collected)
    sys.stdout.write(table(everything, outcome))
    for note in notes:
        print(f"note: {note}")
    listed_runs = {v.ident for v in verdicts if v.kind == retention.RUN}
    other_runs = None if args.only == DVC else sum(r.run_id not in listed_runs for r in survey.runs)
    sys.stdout.write("\n" + summary(everything, outcome, other_runs))
    return 0


def _cache_of(root: Path) -> str:
    return "this repository's DVC cache" if root == Path.cwd().resolve() else f"the DVC cache of {root}"


def _removal(verdicts: Sequence[retention.Verdict]) -> cleanup.Removal:
    going = [v for v in verdicts if v.remove]
    return cleanup.Removal(tuple(v.version for v in going if v.version is not None),
                           tuple(v.ident for v in going if v.kind == retention.RUN),
                           tuple(v.ident for v in going if v.kind == retention.LOGGED_MODEL))

