"""dvc.yaml declares the code each stage runs, and the committed dvc.lock is what that code produced.

DVC re-runs a stage only when a declared dependency changes, so an undeclared module is a stage
that silently keeps stale outputs after an edit. The first tests derive each stage's in-project
imports from its entry point (every import, function-local ones included) and check them against
the stage's declared deps. The last one asks DVC itself whether ``dvc.lock`` matches the working
tree's code and params, so a code change committed without a fresh ``make repro`` fails CI.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

import pytest

from bplab.params.load import load_params
from bplab.testing.scratch import REPO
from support.processes import run

SRC = REPO / "src"
PARAMS = load_params(REPO / "params.yaml")
EVERY_STAGE = frozenset({"download", "preprocess", "train", "evaluate"})
DATA_STAGES = frozenset({"download", "preprocess"})

# Modules a stage imports that cannot change what it writes to its DVC outputs, by stage kind.
# Keep this short: anything that shapes an output belongs in dvc.yaml.
NO_EFFECT_ON_OUTPUTS = {
    "src/bplab/errors.py": EVERY_STAGE,  # exception types: what a failure says, not what succeeds
    "src/bplab/pipeline/process.py": EVERY_STAGE,  # prints errors, sets exit codes
    "src/bplab/interrupts.py": EVERY_STAGE,  # when a signal takes effect, not what a finished stage writes
    "src/bplab/timings.py": EVERY_STAGE,  # how long each phase took (stderr, $BPLAB_TIMINGS)
    "src/bplab/testing/faults.py": EVERY_STAGE,  # the fault campaign's SIGKILL, only with BPLAB_KILL_AT set
    # Which process runs the stage (the warm runner's child, or the client's own): not what it writes
    "src/bplab/runner/client.py": EVERY_STAGE,
    "src/bplab/runner/protocol.py": EVERY_STAGE,
    # MLflow: where runs go, their tags, what is logged. The run id and model URI that train
    # writes to models/V/run.json differ on every run anyway.
    "src/bplab/tracking/store.py": EVERY_STAGE,
    "src/bplab/tracking/recorder.py": EVERY_STAGE,
    # evaluate's model card: read back from the run and written to the registry and the run, not to a DVC output
    "src/bplab/lineage/card.py": frozenset({"evaluate"}),
    "src/bplab/lineage/record.py": frozenset({"evaluate"}),
    "src/bplab/tracking/queries.py": frozenset({"evaluate"}),
    # Pictures logged to MLflow. evaluate also writes them to plots/V, a DVC output: a dep there.
    "src/bplab/plots.py": DATA_STAGES | {"train"},
    # The architecture table validates params.yaml's train section, which the data stages don't use.
    "src/bplab/models/architectures.py": DATA_STAGES,
    "src/bplab/models/networks.py": DATA_STAGES,
    # Downloading: imported with a dataset's module, used by the download stage alone.
    "src/bplab/data/fetch.py": frozenset({"train", "evaluate"}),
}


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_package_marker(path: Path) -> bool:
    """An ``__init__.py`` holding only a docstring and ``__version__``: importing it runs nothing."""
    body = ast.parse(path.read_text()).body
    docstring = body[:1] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else []
    rest = body[len(docstring):]
    return all(isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
               for node in rest)


@cache
def _direct_imports(path: Path) -> frozenset[str]:
    """Modules of ``bplab`` that ``path`` imports anywhere, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "bplab"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bplab":
            found.add(node.module)  # `from bplab.data import mnist` imports the module bplab.data.mnist too
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if _module_file(f"{node.module}.{alias.name}") is not None}
    return frozenset(found)


def imported_modules(script: Path) -> set[str]:
    """Repository-relative files of every ``bplab`` module ``script`` imports, transitively.

    The catalog imports dataset modules by name (``bplab.data.<name>``): where a stage reaches
    it, each listed dataset's module counts as imported too.
    """
    seen: set[str] = set()
    pending = list(_direct_imports(script))
    datasets_added = False
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            name = ".".join(parts[:depth])
            path = _module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            pending += _direct_imports(path)
        if "bplab.data.catalog" in seen and not datasets_added:
            pending += [f"bplab.data.{dataset}" for dataset in PARAMS.datasets]
            datasets_added = True
    files = {_module_file(name) for name in seen}
    return {str(f.relative_to(REPO)) for f in files if f is not None and not _is_package_marker(f)}


@cache
def stages() -> dict[str, tuple[str, str, str, frozenset[str]]]:
    """Per resolved stage (DVC's own resolution of dvc.yaml): kind, script, dataset and declared deps."""
    from dvc.repo import Repo

    variants = PARAMS.train
    resolved = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            _, script, argument = stage.cmd.split()
            kind = Path(script).stem
            dataset = argument if kind in {"download", "preprocess"} else variants[argument].dataset
            declared = frozenset(str(dep.def_path) for dep in stage.deps if str(dep.def_path) != "params.yaml")
            resolved[stage.addressing] = (kind, script, dataset, declared)
    return resolved


def _covered(path: str, declared: frozenset[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in declared)


def test_every_stage_kind_and_variant_is_checked() -> None:
    kinds = {kind for kind, *_ in stages().values()}
    assert kinds == EVERY_STAGE
    assert len(stages()) == 2 * len(PARAMS.datasets) + 2 * len(PARAMS.train)


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_imported_module_is_a_declared_dependency(name: str) -> None:
    kind, script, dataset, declared = stages()[name]
    assert script in declared, f"{name}: its own entry point {script} is not a dependency"
    # the other datasets' modules validate their own sections of params.yaml, nothing else here
    other_datasets = {f"src/bplab/data/{d}.py" for d in PARAMS.datasets if d != dataset}
    missing = sorted(path for path in imported_modules(REPO / script)
                     if not _covered(path, declared) and kind not in NO_EFFECT_ON_OUTPUTS.get(path, ())
                     and path not in other_datasets)
    assert missing == [], f"{name} imports modules that dvc.yaml does not list as its deps"


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_declared_code_dependency_is_imported(name: str) -> None:
    kind, script, _, declared = stages()[name]
    imported = imported_modules(REPO / script) | {script}
    stale = sorted(dep for dep in declared if dep.startswith(("src/", "stages/"))
                   and not any(_covered(path, frozenset({dep})) for path in imported))
    assert stale == [], f"{name} depends on code it never imports"


def test_the_import_scan_sees_function_local_imports() -> None:
    # stages import the library inside main(); train imports the loop inside a function
    assert "src/bplab/train/loop.py" in imported_modules(REPO / "stages/train.py")
    assert "src/bplab/tracking/registry.py" in imported_modules(REPO / "stages/evaluate.py")
    assert "src/bplab/params/schema.py" in imported_modules(REPO / "stages/evaluate.py")
    assert "src/bplab/data/boston.py" in imported_modules(REPO / "stages/train.py")  # through the catalog


def _plot_definitions() -> dict[str, dict]:
    """dvc.yaml's top-level plots as DVC resolves them: plot id -> its properties."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        listed = load_file(repo, str(REPO / "dvc.yaml")).plots
    return {k: v or {} for entry in listed for k, v in (entry.items() if isinstance(entry, dict) else [(entry, {})])}


def _curves_of(history: str, definitions: dict[str, dict]) -> list[tuple[str, bool]]:
    """The columns of ``history`` that the definitions draw against ``epoch``, each with whether it
    comes from a definition shared by several files (a folder's)."""
    drawn = []
    for plot_id, props in definitions.items():
        y = props.get("y")
        if isinstance(y, dict):  # an overlay that lists its files, each with its own columns
            columns, shared = y.get(history, []), False
        elif history == plot_id or history.startswith(plot_id.rstrip("/") + "/"):  # the file, or its folder
            columns, shared = y or [], history != plot_id
        else:
            continue
        if props.get("x") == "epoch":
            drawn += [(column, shared) for column in ([columns] if isinstance(columns, str) else columns)]
    return drawn


@cache
def _outs() -> dict[str, frozenset[str]]:
    """Per resolved stage, the outputs it declares."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.addressing: frozenset(str(out.def_path) for out in stage.outs) for stage in repo.index.stages}


def test_every_variant_in_params_yaml_has_learning_curves() -> None:
    """Adding a variant is a params.yaml entry: its train stage writes history/<variant>.csv and a
    plot of dvc.yaml draws that file's losses per epoch, with no edit of dvc.yaml."""
    from bplab.params.metrics import EPOCH_METRICS
    from bplab.paths import history_file

    definitions = _plot_definitions()
    for variant in PARAMS.train:
        history = str(history_file(variant, Path()))
        assert history in _outs()[f"train@{variant}"], f"train@{variant} does not declare {history}"
        drawn = _curves_of(history, definitions)
        assert {"train_loss", "val_loss"} <= {c for c, _ in drawn}, f"{variant}: no loss curves of {history}"
        # Every variant's file has the epoch metrics' columns (empty where the task has none), but
        # not the same learning-rate columns (lr, lr/<group>): DVC refuses a file's whole chart when
        # it lacks a column, so a definition shared by every file draws only epoch metrics.
        foreign = sorted(c for c, shared in drawn if shared and c not in EPOCH_METRICS)
        assert foreign == [], f"{variant}: a plot for every history file draws {foreign}"


def test_dvc_lock_matches_the_code_and_params() -> None:
    """What `dvc status` reports, minus what a fresh clone lacks (the data and models DVC caches)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        outputs = {str(out.def_path) for stage in repo.index.stages for out in stage.outs}
    report = json.loads(run(["dvc", "status", "--json"], REPO).stdout)
    stale = []
    for stage, changes in report.items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed"
                stale.append(f"{stage}: {change}")
                continue
            for dep, state in change.get("changed deps", {}).items():
                if isinstance(state, dict):  # params: {"train.mnist_mlp.lr": "modified"}
                    stale += [f"{stage}: {dep}:{key} {value}" for key, value in state.items()]
                elif not (dep in outputs and state == "deleted"):
                    stale.append(f"{stage}: dep {dep} {state}")
            for out, state in change.get("changed outs", {}).items():
                # a fresh clone has no cached outputs; metrics (cache: false, in git) must match
                if out.startswith("metrics/") or state not in {"not in cache", "deleted"}:
                    stale.append(f"{stage}: out {out} {state}")
    assert stale == [], "dvc.lock lags the working tree: run `make repro` and commit dvc.lock and metrics/"


def test_dvc_reads_yaml_with_ruamels_c_parser() -> None:
    # DVC parses dvc.yaml, dvc.lock and params.yaml on every command; without ruamel.yaml.clib its
    # pure-Python parser costs 0.4 to 0.8 s of each `dvc exp run` (bench/results.md).
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None and YAML(typ="safe").Parser is CParser
