"""A registered model's card: what it is, what it was trained on, how it scores, where it comes
from and how to load it, as Markdown.

Evaluate writes it on every version it registers (the version's description, which MLflow's model
version page shows, and the run's ``model_card.md`` artifact); ``bplab lineage`` prints it for any
run or model a user names, and ``bplab report`` puts each champion's in the study's page. All three
render it here, from the run's :class:`~bplab.lineage.record.TrainingRecord` and its registry version.

A stored card states its version, never an alias: aliases move and a card written once would go
stale. The registry page shows them, and ``bplab lineage`` (which renders the card afresh) lists
the aliases a version holds when it is asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bplab.data import catalog
from bplab.lineage import record as records
from bplab.lineage.record import PROCESSED, RAW, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, LineageError, TrainingRecord
from bplab.params.metrics import SCORES, higher_is_better
from bplab.tracking import queries, store

CARD_FILE = "model_card.md"  # the run's artifact; the version's description holds the same text

# The test scores of each variant trained as its tutorial trains it (every training row, no
# validation split; default params, full data), from docs/variants.md's "What we got": the
# tutorials print their scores per epoch and report no final figure, so this is theirs, reproduced.
TUTORIAL_FIGURES: dict[str, dict[str, float]] = {
    "flower_logreg": {"test_acc": 0.4925},
    "flower_twolayer": {"test_acc": 0.905},
    "flower_sequential": {"test_acc": 0.91},
    "flower_module": {"test_acc": 0.91},
    "mnist_mlp": {"test_acc": 0.9814},
    "mnist_batchnet": {"test_acc": 0.9811},
    "boston_module": {"test_rmse": 5.20, "test_r2": 0.63},
    "boston_sequential": {"test_rmse": 5.20, "test_r2": 0.63},
    "boston_adam": {"test_rmse": 19.3, "test_r2": -4.10},
}
# Params shown in the card's first sections rather than in its table of params.
_SIZES = ("n_train", "n_val", "n_test", "n_features", "n_parameters")
_SHOWN_ELSEWHERE = (*_SIZES, "variant", "dataset")
_MOST_CHANGES = 10  # uncommitted files listed; the rest are counted


@dataclass(frozen=True)
class Registered:
    """A registry version of the run's model: its registered model, number and tags, and, when
    the card is rendered to be read now (``bplab lineage``), the aliases it holds (``None`` for a
    stored card, which must stay true after an alias moves)."""

    name: str
    version: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...] | None = None

    @property
    def uri(self) -> str:
        """The URI that loads this version."""
        return f"models:/{self.name}/{self.version}"


def _number(value: Any) -> str:
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value)


def _what_it_is(rec: TrainingRecord) -> list[str]:
    p = rec.params
    hidden = p.get("model.hidden", "[]")
    network = f"`{p.get('model.arch', '?')}`" + (f", hidden layers {hidden}" if hidden != "[]" else ", no hidden layer")
    count = p.get("n_parameters")
    sizes = f"{p.get('n_features', '?')} input features" + (f", {int(count):,} parameters" if count else "")
    schedule = ", ".join(f"{key} {p[key]}" for key in ("optimizer", "lr", "batch_size", "epochs", "init", "seed")
                         if key in p)
    stopped = rec.tags.get("stop_reason")
    device = rec.params.get("device") or rec.environment.get("device")
    return ["## What it is", "",
            f"- Network: {network}; {sizes}",
            f"- Training: {schedule}" + (f" ({stopped})" if stopped else "") + (f", on {device}" if device else ""),
            ""]


def _trained_on(rec: TrainingRecord, registered: Registered | None) -> list[str]:
    p = rec.params
    task = catalog.dataset(rec.dataset).task
    data = dict(rec.data)
    if registered is not None and registered.tags.get("test_digest"):  # the split this version was scored on
        data[TEST_SPLIT] = registered.tags["test_digest"]
    sizes = (f"{p['n_train']} training rows, {p['n_val']} validation rows, {p['n_test']} test rows"
             if all(f"n_{split}" in p for split in ("train", "val", "test")) else "split sizes not recorded")
    lines = ["## What it was trained on", "", f"Dataset **{rec.dataset}** ({task}): {sizes}.", "",
             "| data | of | hash |", "| --- | --- | --- |"]
    for kind in (RAW, PROCESSED, TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT):
        what = "DVC md5" if kind in (RAW, PROCESSED) else "content digest"
        where = rec.data_paths.get(kind, "").replace(f"{PROCESSED} ", "")
        found = f"`{data[kind]}` ({what})" if kind in data else "not recorded"
        lines.append(f"| {kind} | {f'`{where}`' if where else ''} | {found} |")
    return [*lines, ""]


def _score(rec: TrainingRecord, registered: Registered | None, name: str) -> str:
    """A final score: the registry version's own (what it was ranked and reported by), else the run's."""
    if registered is not None and name in registered.tags:
        return _number(registered.tags[name])
    return _number(rec.metrics[name]) if name in rec.metrics else ""


def _scores(rec: TrainingRecord, registered: Registered | None) -> list[str]:
    described = catalog.dataset(rec.dataset)
    reference = TUTORIAL_FIGURES.get(rec.variant, {})
    lines = ["## How it scores", "", "| score | validation | test | tutorial (test) |", "| --- | --- | --- | --- |"]
    for score in SCORES[described.task]:
        tutorial = reference.get(f"test_{score}")
        validation, test = _score(rec, registered, f"val_{score}"), _score(rec, registered, f"test_{score}")
        lines.append(f"| {score} | {validation} | {test} | {'' if tutorial is None else _number(tutorial)} |")
    chosen = described.champion.selection
    lines += ["", f"Versions are ranked by `{chosen}` ({'higher' if higher_is_better(chosen) else 'lower'} is "
                  "better), on the validation split; the test scores are reported, never used to choose."]
    if reference:
        lines.append("The tutorial's figure: the same network trained as the tutorial trains it (every training "
                     "row, no validation split), default params, full data.")
    return [*lines, ""]


def _commit(rec: TrainingRecord) -> str:
    if rec.git_commit is None:
        return "not recorded"
    if not rec.git_dirty:
        return f"`{rec.git_commit}`" + (", clean" if rec.git_dirty is False else "")
    listed = ", ".join(f"`{line.strip()}`" for line in rec.git_changes[:_MOST_CHANGES])
    more = len(rec.git_changes) - _MOST_CHANGES
    return (f"`{rec.git_commit}` with uncommitted changes" + (f": {listed}" if listed else "")
            + (f" and {more} more" if more > 0 else ""))


def _origin(rec: TrainingRecord, registered: Registered | None) -> list[str]:
    env = rec.environment
    versions = ", ".join(f"{name} {env[key]}" for name, key in (("Python", "python"), ("torch", "torch"),
                                                               ("MLflow", "mlflow"), ("NumPy", "numpy"))
                         if key in env)
    rows = [("training run", f"`{rec.run_id}` (experiment {rec.dataset}, run {rec.variant}, {rec.status})"),
            ("git commit", _commit(rec)),
            ("DVC experiment", f"`{rec.dvc_exp}`" if rec.dvc_exp else "none (`dvc repro` in the workspace)"),
            ("stage code", f"sha256 of {len(rec.code)} files, in the run's `reproduce/code.json`"
             if rec.code else "not recorded"),
            ("environment", versions or "not recorded")]
    if registered is None:
        rows.append(("registered model", "none: the run was not evaluated"))
    else:
        rows.append(("registered model", f"`{registered.name}` version {registered.version}"))
        rows.append(("aliases", (", ".join(f"`@{a}`" for a in registered.aliases) or "none") + " (now)"
                     if registered.aliases is not None else
                     f"as the registry shows them (they move; `bplab lineage models:/{registered.name}@champion` "
                     "names the version holding one now)"))
    return ["## Where it comes from", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def _params(rec: TrainingRecord) -> list[str]:
    shown = [f"`{k}={v}`" for k, v in sorted(rec.params.items()) if k not in _SHOWN_ELSEWHERE]
    return ["## Params", "", ", ".join(shown) if shown else "none recorded", ""]


def _how_to_load(rec: TrainingRecord, registered: Registered | None) -> list[str]:
    if registered is None:
        return []
    return ["## Load and serve it", "", "```python", "import mlflow",
            f'model = mlflow.pytorch.load_model("{registered.uri}")  # a torch.nn.Module', "```", "",
            f"`mlflow models serve -m {registered.uri} --env-manager local` serves this version; "
            f"`bplab serve {registered.name}` serves the version holding `@champion`.", ""]


def render(rec: TrainingRecord, registered: Registered | None) -> str:
    """The card of ``rec``'s model as Markdown, as registry version ``registered`` (``None``: a run
    no version was registered from)."""
    title = (f"# {registered.name} version {registered.version}: {rec.variant}" if registered is not None
             else f"# {rec.variant}, run {rec.short_id} (not registered)")
    text = "\n".join([title, "", *_what_it_is(rec), *_trained_on(rec, registered), *_scores(rec, registered),
                      *_origin(rec, registered), *_params(rec), *_how_to_load(rec, registered)])
    return store.redact(text.rstrip()) + "\n"  # a URL in a param loses its credentials, as everything logged


def registered_version(client: Any, name: str, version: str, with_aliases: bool) -> Registered:
    """Version ``version`` of registered model ``name`` as the card shows it."""
    found = client.get_model_version(name, version)
    aliases = tuple(sorted(found.aliases or ())) if with_aliases else None
    return Registered(name, str(found.version), dict(found.tags), aliases)


def _latest_version_of_run(client: Any, run_id: str) -> Any | None:
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def lineage(reference: str, tracking_uri: str | None = None) -> str:
    """The card of the model ``reference`` names (as :func:`bplab.lineage.record.resolve` reads
    it), rendered now, with the aliases its version holds: a models:/ URI's version, or the latest
    version registered from the run. A :class:`LineageError` names an unknown reference."""
    uri = tracking_uri or store.tracking_uri()
    run_id = records.resolve(reference, uri)
    rec = records.load(run_id, uri)
    client = store.client(uri)
    named = records.MODEL_URI.fullmatch(reference)
    if named is not None:
        found = queries.model_version_or_none(client, named["name"], named["alias"], named["version"])
        if found is None:  # resolve found it a moment ago: deleted meanwhile
            raise LineageError(f"{reference}: no such registered model version any more")
    else:
        found = _latest_version_of_run(client, run_id)
    registered = None if found is None else registered_version(client, found.name, str(found.version), True)
    return render(rec, registered)


def card_of_version(name: str, version: str, run_id: str, tracking_uri: str | None = None) -> str:
    """The stored card of version ``version`` of registered model ``name``, registered from run
    ``run_id``: what evaluate writes (no aliases, see the module's docstring)."""
    uri = tracking_uri or store.tracking_uri()
    return render(records.load(run_id, uri), registered_version(store.client(uri), name, version, False))
