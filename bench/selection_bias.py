"""How much choosing a model on the test split flatters its test score (issue 22's bias, measured).

Before the validation split, a training's per-epoch "eval" data was the test split, so early
stopping with ``restore_best`` kept the epoch that scored best on the very rows the test metric
is then computed on. Here one variant is trained with early stopping and ``restore_best`` twice
from each seed, on the same training rows, with the library's own loop and controls: once
watching the validation split (what the pipeline does now), once watching the test split (what it
did). Both final models are scored on the test split.

    .venv/bin/python bench/selection_bias.py        # after `make repro` (reads data/processed/)

Writes ``bench/selection-bias.md`` and ``bench/selection-bias.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# (variant, what changes in its params, the score early stopping watches, the test metric reported,
# patience, seeds): Boston's 102 test rows are where choosing on them flatters most (the docs'
# early-stopping example, lr 0.01 in batches of 32 for at most 1000 epochs); MNIST's 10000, least.
CASES = (("boston_module", {"lr": 0.01, "batch_size": 32, "epochs": 1000}, "loss", "test_rmse", 50, 10),
         ("mnist_mlp", {"epochs": 20}, "acc", "test_acc", 3, 3))


def _train_and_score(name: str, changes: dict, watched: str, patience: int, seed: int, watch_split: str) -> dict:
    """Train ``name`` from ``seed`` with early stopping on ``<watch_split>`` (restore_best), then its test metrics."""
    import torch

    from bplab.data import catalog, processed
    from bplab.models.architectures import build_model, initialize
    from bplab.params.load import load_params
    from bplab.params.schema import EarlyStopping
    from bplab.pipeline.evaluate import compute_metrics, predict
    from bplab.train.loop import EpochPlan, Task, fit
    from bplab.train.optim import build_optimizer
    from bplab.train.schedules import build_controls

    variant = load_params(REPO / "params.yaml").train[name]
    stopping = EarlyStopping(metric=f"val_{watched}", patience=patience, restore_best=True)
    variant = variant.model_copy(update={**changes, "early_stopping": stopping})
    epochs = variant.epochs
    data = processed.load(REPO / "data" / "processed" / variant.dataset).splits
    splits = {split: tuple(torch.from_numpy(a) for a in pair) for split, pair in data.items()}
    task = Task(catalog.dataset(variant.dataset).task)
    n_out = int(max(y.max() for _, y in data.values())) + 1 if task.kind == "multiclass" else 1
    torch.manual_seed(seed)
    model = initialize(build_model(variant.model, splits["train"][0].shape[1], n_out), variant.init)
    optimizer = build_optimizer(model, variant, f"train.{name}")
    controls = build_controls(optimizer, variant, len(splits["train"][0]), task.has_accuracy, f"train.{name}")
    started = time.perf_counter()
    last = fit(model, optimizer, task, splits["train"], splits[watch_split],
               EpochPlan(epochs, variant.batch_size, variant.eval_batch_size, variant.shuffle),
               torch.Generator().manual_seed(seed), lambda records: None, report_every_s=0, controls=controls)
    model.eval()
    test = compute_metrics(task.kind, predict(model, splits["test"][0], variant.eval_batch_size), splits["test"][1],
                           "test")
    return {"watched": watch_split, "seed": seed, "stopped_epoch": last, "best_epoch": controls.stopper.best_epoch,
            "seconds": round(time.perf_counter() - started, 2), **test}


def measure() -> dict[str, Any]:
    """Every case, both ways, every seed; and each case's mean difference of the test metric."""
    from bplab.params.metrics import higher_is_better

    results = {}
    for name, changes, watched, metric, patience, seeds in CASES:
        runs = [_train_and_score(name, changes, watched, patience, seed, split)
                for seed in range(seeds) for split in ("val", "test")]
        by_split = {split: [r[metric] for r in runs if r["watched"] == split] for split in ("val", "test")}
        flattering = [b - a for a, b in zip(by_split["val"], by_split["test"])]
        results[name] = {"metric": metric, "watched": f"val_{watched} / test_{watched}", "patience": patience,
                         "changes": changes, "higher_is_better": higher_is_better(metric), "runs": runs,
                         "mean_on_val": statistics.fmean(by_split["val"]),
                         "mean_on_test": statistics.fmean(by_split["test"]),
                         "mean_difference": statistics.fmean(flattering)}
    return results


def render(results: dict[str, Any]) -> str:
    """The results as Markdown."""
    lines = ["# Stopping on the test split flatters the test score", "",
             "Each variant trained with early stopping (`restore_best: true`) from each seed, on the same "
             "training rows, watching the validation split (the pipeline now) or the test split (the pipeline "
             "before issue 22); the final model scored on the test split. Made by `bench/selection_bias.py`.", ""]
    for name, r in results.items():
        better = "higher" if r["higher_is_better"] else "lower"
        changed = ", ".join(f"{k} {v}" for k, v in r["changes"].items())
        lines += [f"## {name} ({changed}): {r['metric']} ({better} is better), watching {r['watched']}, "
                  f"patience {r['patience']}", "",
                  f"| seed | stopped on validation: {r['metric']} (best epoch) | stopped on test: {r['metric']} "
                  "(best epoch) |", "| --- | --- | --- |"]
        runs = {(run["seed"], run["watched"]): run for run in r["runs"]}
        for seed in sorted({run["seed"] for run in r["runs"]}):
            val, test = runs[(seed, "val")], runs[(seed, "test")]
            lines.append(f"| {seed} | {val[r['metric']]:.4f} ({val['best_epoch']}) | "
                         f"{test[r['metric']]:.4f} ({test['best_epoch']}) |")
        lines += ["", f"Mean {r['metric']}: {r['mean_on_val']:.4f} stopping on validation, {r['mean_on_test']:.4f} "
                  f"stopping on test (difference {r['mean_difference']:+.4f}).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    results = measure()
    (args.out / "selection-bias.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (args.out / "selection-bias.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
