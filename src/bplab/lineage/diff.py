"""Why two training runs differ: ``bplab diff RUN_A RUN_B``.

Two :class:`~bplab.lineage.record.TrainingRecord` are set side by side in the order a change
propagates: the params that differ, the code of the train stage (each file's sha256, and
``git diff --stat`` between the two commits when this checkout has both), the data (DVC's hashes
of the raw and processed data, the digests of the three splits), the environment (Python,
package versions, device), and last the metrics those made. Each section says "no difference"
when there is none, and "not recorded" where a run lacks what it would compare.

:func:`compare` builds the report as plain data (what ``--format json`` prints, with stable
keys); :func:`markdown` renders it; :func:`curves_figure` overlays the two runs' learning curves.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bplab.lineage.record import PROCESSED, RAW, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, TrainingRecord
from bplab.params.metrics import EPOCH_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_DIFFERENCE = "no difference"
NOT_RECORDED = "not recorded"
DATA_INPUTS = (RAW, PROCESSED, TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)
# The data's sizes are logged as params; the report shows them under data, with the hashes.
SIZES = {"n_train": "train rows", "n_val": "validation rows", "n_test": "test rows", "n_features": "features"}
# Logged params that are not in reproduce/variant.json: what the params made of the model and the run.
DERIVED_PARAMS = ("n_parameters", "world_size")
# Metrics that say how a model scores; wall times, system samples and evaluate's self-check are left out.
METRIC_PREFIXES = ("test_", "val_", "train_", "lr")
NOT_METRICS = ("train_loss_step",)  # per iteration, not per epoch: its last value is one batch's
SHORT_HASH = 12


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_params(record: TrainingRecord, variant_key: str, dataset_key: str) -> dict[str, Any]:
    """The params that shaped ``record``, by dotted key: ``reproduce/variant.json`` (the variant's
    ``train`` section under ``variant_key``, its dataset's ``data`` section under ``dataset_key``)
    with the model's size; the run's logged params where it has no variant.json."""
    if not record.resolved:
        return {key: _typed(value) for key, value in record.params.items() if key not in SIZES}
    flat = {}
    for key, value in _flat(record.resolved).items():
        section, _, rest = key.partition(".")
        renamed = {"train": variant_key, "data": dataset_key}.get(section) if rest else None
        flat[f"{renamed}.{rest}" if renamed else key] = value
    return flat | {key: _typed(record.params[key]) for key in DERIVED_PARAMS if key in record.params}


def _typed(logged: str) -> Any:
    """A logged param (MLflow keeps strings) as the value it was: ``10`` and ``10.0`` are not a change."""
    try:
        return json.loads(logged)
    except (TypeError, ValueError):
        return logged


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "a": a.get(key), "b": b.get(key)} for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key)]


def params_section(a: TrainingRecord, b: TrainingRecord) -> dict[str, Any]:
    """The params whose values differ, by dotted key as params.yaml spells them
    (``train.boston_module.lr``; ``train.lr`` when the runs are of two variants)."""
    variant_key = f"train.{a.variant}" if a.variant == b.variant else "train"
    dataset_key = f"data.{a.dataset}" if a.dataset == b.dataset else "data"
    left, right = run_params(a, variant_key, dataset_key), run_params(b, variant_key, dataset_key)
    differences = _differences(left, right)
    return {"same": not differences, "compared": len(left.keys() | right.keys()), "differences": differences,
            "source": {"a": "reproduce/variant.json" if a.resolved else "logged params",
                       "b": "reproduce/variant.json" if b.resolved else "logged params"}}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None


def _in_history(root: Path, commit: str | None) -> bool:
    found = _git(root, "cat-file", "-e", f"{commit}^{{commit}}") if commit else None
    return found is not None and found.returncode == 0


def git_diff_stat(root: Path, a: str | None, b: str | None, paths: list[str]) -> str | None:
    """``git diff --stat A B -- paths`` in ``root``, or ``None`` when the commits are equal, not
    both in its history, or git cannot answer."""
    if a == b or not paths or not (_in_history(root, a) and _in_history(root, b)):
        return None
    found = _git(root, "diff", "--stat", a, b, "--", *paths)
    return found.stdout.rstrip("\n") if found is not None and found.returncode == 0 else None


def code_section(a: TrainingRecord, b: TrainingRecord, root: Path) -> dict[str, Any]:
    """The train stage's code files whose sha256 differ or that one run alone had, the
    ``git diff --stat`` of those files between the runs' commits, and each run's uncommitted changes."""
    recorded = {"a": bool(a.code), "b": bool(b.code)}
    changed = sorted(path for path in a.code.keys() & b.code.keys() if a.code[path] != b.code[path])
    only_a, only_b = sorted(a.code.keys() - b.code.keys()), sorted(b.code.keys() - a.code.keys())
    same = None if not all(recorded.values()) else not (changed or only_a or only_b)
    in_history = _in_history(root, a.git_commit) and _in_history(root, b.git_commit)
    return {"same": same, "recorded": recorded, "compared": len(a.code.keys() | b.code.keys()),
            "changed": changed, "only_in_a": only_a, "only_in_b": only_b,
            "commits": {"a": a.git_commit, "b": b.git_commit, "both_in_history": in_history},
            "git_diff_stat": git_diff_stat(root, a.git_commit, b.git_commit, sorted(a.code.keys() | b.code.keys())),
            "uncommitted_changes": {"a": a.git_changes if a.git_dirty else [],
                                    "b": b.git_changes if b.git_dirty else []}}


def data_section(a: TrainingRecord, b: TrainingRecord) -> dict[str, Any]:
    """Each input's hash in both runs and whether it changed (``None``: a run did not record it),
    and the data's sizes where they differ."""
    inputs, changed = [], []
    for name in DATA_INPUTS:
        left, right = a.data.get(name), b.data.get(name)
        differs = None if left is None or right is None else left != right
        inputs.append({"input": name, "a": left, "b": right, "changed": differs})
        if differs:
            changed.append(name)
    compared = [entry for entry in inputs if entry["changed"] is not None]
    sizes = [{"key": label, "a": _typed(a.params[key]) if key in a.params else None,
              "b": _typed(b.params[key]) if key in b.params else None} for key, label in SIZES.items()]
    return {"same": (not changed) if compared else None, "changed": changed, "inputs": inputs,
            "sizes": [size for size in sizes if size["a"] != size["b"]]}


def environment_section(a: TrainingRecord, b: TrainingRecord) -> dict[str, Any]:
    """The environment's entries (Python, packages, platform, device) that differ."""
    recorded = {"a": bool(a.environment), "b": bool(b.environment)}
    differences = _differences(a.environment, b.environment) if all(recorded.values()) else []
    return {"same": not differences if all(recorded.values()) else None, "recorded": recorded,
            "differences": differences, "a": a.environment, "b": b.environment}


def _metric_names(a: dict[str, float], b: dict[str, float]) -> list[str]:
    """Test scores first, then validation, training and learning-rate metrics, each group sorted."""
    names = [name for name in a.keys() | b.keys() if name.startswith(METRIC_PREFIXES) and name not in NOT_METRICS]
    return sorted(names, key=lambda name: (next(i for i, p in enumerate(METRIC_PREFIXES) if name.startswith(p)), name))


def metrics_section(a: TrainingRecord, b: TrainingRecord) -> dict[str, Any]:
    """Each final metric (per-epoch ones: their last epoch) of both runs, the change and the
    relative change (``None`` where a run lacks the metric or A's value is 0)."""
    rows = []
    for name in _metric_names(a.metrics, b.metrics):
        left, right = a.metrics.get(name), b.metrics.get(name)
        change = right - left if left is not None and right is not None else None
        relative = change / abs(left) if change is not None and left else None
        rows.append({"metric": name, "a": left, "b": right, "change": change, "relative_change": relative})
    return {"same": all(row["change"] == 0 for row in rows), "metrics": rows}


def _run_summary(record: TrainingRecord) -> dict[str, Any]:
    started = (datetime.datetime.fromtimestamp(record.start_time / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
               if record.start_time else None)
    return {"run_id": record.run_id, "short_id": record.short_id, "variant": record.variant,
            "dataset": record.dataset, "status": record.status, "started": started,
            "git_commit": record.git_commit, "git_dirty": record.git_dirty, "dvc_exp": record.dvc_exp}


def compare(a: TrainingRecord, b: TrainingRecord, root: Path) -> dict[str, Any]:
    """The report of what differs from run ``a`` to run ``b``: ``runs``, then ``params``, ``code``,
    ``data``, ``environment`` and ``metrics``, each with ``same`` (``None`` where a run did not
    record what it would take to tell). ``root`` is the git repository asked for ``git diff``."""
    return {"runs": {"a": _run_summary(a), "b": _run_summary(b)}, "params": params_section(a, b),
            "code": code_section(a, b, root), "data": data_section(a, b),
            "environment": environment_section(a, b), "metrics": metrics_section(a, b)}


def label(summary: dict[str, Any]) -> str:
    """A run as the report and the picture name it: its short id and its DVC experiment or variant."""
    return f"{summary['short_id']} ({summary['dvc_exp'] or summary['variant']})"


def curves_figure(curves: dict[str, dict[str, list[tuple[int, float]]]], title: str = "") -> Figure:
    """The learning curves of each run (``{label: {metric: [(epoch, value), ...]}}``) overlaid:
    a panel for the loss and one for the accuracy where a run has it."""
    from bplab import plots

    return plots.overlaid_learning_curves(curves, title)


def curves(record: TrainingRecord, tracking_uri: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """The run's per-epoch metrics (:data:`~bplab.params.metrics.EPOCH_METRICS`) from MLflow."""
    from bplab.lineage.record import history

    return history(record.run_id, EPOCH_METRICS, tracking_uri)


# Rendering ----------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def _short(digest: str | None) -> str:
    return f"`{digest[:SHORT_HASH]}`" if digest else NOT_RECORDED


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return [cells(header), cells(["---"] * len(header)), *map(cells, rows)]


def _runs_markdown(report: dict[str, Any]) -> list[str]:
    a, b = report["runs"]["a"], report["runs"]["b"]

    def commit(run: dict[str, Any]) -> str:
        if not run["git_commit"]:
            return NOT_RECORDED
        return f"`{run['git_commit'][:SHORT_HASH]}`" + (" + uncommitted changes" if run["git_dirty"] else "")

    rows = [["run id", f"`{a['run_id']}`", f"`{b['run_id']}`"], ["variant", a["variant"], b["variant"]],
            ["started", _shown(a["started"]), _shown(b["started"])], ["git commit", commit(a), commit(b)],
            ["DVC experiment", _shown(a["dvc_exp"]), _shown(b["dvc_exp"])]]
    return [f"# bplab diff: A {label(a)} → B {label(b)}", "", *_table(["", "A", "B"], rows)]


def _params_markdown(section: dict[str, Any]) -> list[str]:
    lines = ["## Params", ""]
    if section["same"]:
        return [*lines, f"{NO_DIFFERENCE} ({section['compared']} params compared)."]
    rows = [[f"`{d['key']}`", _shown(d["a"]), _shown(d["b"])] for d in section["differences"]]
    return [*lines, *_table(["param", "A", "B"], rows)]


def _code_markdown(section: dict[str, Any]) -> list[str]:
    lines = ["## Code", ""]
    missing = [side.upper() for side, done in section["recorded"].items() if not done]
    if missing:
        lines.append(f"The code's hashes are {NOT_RECORDED} for run {' and '.join(missing)} (reproduce/code.json: "
                     "runs record it since bplab diff exists).")
    elif section["same"]:
        lines.append(f"{NO_DIFFERENCE}: the {section['compared']} code files of the train stage have the same sha256.")
    else:
        rows = [[f"`{path}`", how] for key, how in (("changed", "changed"), ("only_in_a", "only in A"),
                                                    ("only_in_b", "only in B")) for path in section[key]]
        verb = "differs" if len(rows) == 1 else "differ"
        lines += [f"{len(rows)} of the {section['compared']} code files of the train stage {verb}:", "",
                  *_table(["file", "sha256"], rows)]
    commits = section["commits"]
    if section["git_diff_stat"]:
        lines += ["", f"`git diff --stat {commits['a'][:SHORT_HASH]} {commits['b'][:SHORT_HASH]}` of the stage's code:",
                  "", "```", section["git_diff_stat"], "```"]
    elif commits["a"] != commits["b"] and not commits["both_in_history"]:
        lines += ["", "The runs' commits are not both in this checkout's git history: no `git diff`."]
    for side, changes in section["uncommitted_changes"].items():
        if changes:
            lines += ["", f"Uncommitted changes when run {side.upper()} trained (`git status --porcelain`):", "",
                      "```", *changes, "```"]
    return lines


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _data_markdown(section: dict[str, Any]) -> list[str]:
    lines = ["## Data", ""]
    same = [e["input"] for e in section["inputs"] if e["changed"] is False]
    missing = [e["input"] for e in section["inputs"] if e["changed"] is None]
    if section["changed"]:
        unchanged = f"; the {_listed(same)} did not." if same else "."
        lines.append(f"The {_listed(section['changed'])} changed{unchanged}")
    elif same:
        lines.append(f"{NO_DIFFERENCE}: the {_listed(same)} are the same in both runs.")
    if missing:
        lines.append(f"{NOT_RECORDED.capitalize()} in one run or both: {_listed(missing)}.")
    rows = [[e["input"], _short(e["a"]), _short(e["b"]),
             {True: "**changed**", False: "same", None: NOT_RECORDED}[e["changed"]]] for e in section["inputs"]]
    rows += [[s["key"], _shown(s["a"]), _shown(s["b"]), "**changed**"] for s in section["sizes"]]
    return [*lines, "", *_table(["input", "A", "B", ""], rows)]


def _environment_markdown(section: dict[str, Any]) -> list[str]:
    lines = ["## Environment", ""]
    missing = [side.upper() for side, done in section["recorded"].items() if not done]
    if missing:
        return [*lines, f"{NOT_RECORDED.capitalize()} for run {' and '.join(missing)} (reproduce/environment.json: "
                "runs record it since bplab diff exists)."]
    if section["same"]:
        shown = ", ".join(f"{k} {section['a'][k]}" for k in ("python", "torch", "mlflow", "numpy", "device")
                          if k in section["a"])
        return [*lines, f"{NO_DIFFERENCE} ({shown})."]
    rows = [[d["key"], _shown(d["a"]), _shown(d["b"])] for d in section["differences"]]
    return [*lines, *_table(["", "A", "B"], rows)]


def _change(row: dict[str, Any]) -> tuple[str, str]:
    if row["change"] is None:
        return "—", "—"
    if row["change"] == 0:
        return "0", "0%"
    relative = "—" if row["relative_change"] is None else f"{row['relative_change']:+.2%}"
    return f"{row['change']:+.6g}", relative


def _metrics_markdown(section: dict[str, Any]) -> list[str]:
    lines = ["## Metrics", ""]
    if not section["metrics"]:
        return [*lines, "Neither run logged a metric."]
    if section["same"]:
        lines += [f"{NO_DIFFERENCE}: every metric is equal to the last digit.", ""]
    rows = [[row["metric"], _shown(row["a"]), _shown(row["b"]), *_change(row)] for row in section["metrics"]]
    return [*lines, *_table(["metric", "A", "B", "change", "relative"], rows),
            "", "Per-epoch metrics (train_*, val_loss, val_acc, lr) at their last epoch."]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, readable as it is on a terminal."""
    parts = [_runs_markdown(report), _params_markdown(report["params"]),
             _code_markdown(report["code"]), _data_markdown(report["data"]),
             _environment_markdown(report["environment"]), _metrics_markdown(report["metrics"])]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"
