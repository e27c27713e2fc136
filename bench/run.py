"""bplab against the tutorials' own loops and against the machine, measured in one run.

    make bench                                   # full size: about 25 minutes on 2 cores
    .venv/bin/python bench/run.py --quick --out /tmp/b   # tiny sizes, a minute: what the tests run

Measures (see the docs' Performance page): an MNIST epoch (bplab's loop, the tutorial's DataLoader loop,
and the compute bound from the epoch's FLOPs and matmul throughput measured here), 10000
full-batch flower steps, a cold ``dvc repro`` of the whole pipeline in a scratch copy (empty DVC
cache and MLflow store) with per-stage times, a no-op repro, a one-param edit as a user makes it
(``dvc exp run -S``, timed whole: DVC, the training and the evaluate stage), the tutorials' bare
loops doing the same training, each training stage's start-up and wind-down and each evaluate
stage against the floor ``python -c "import torch, mlflow"``, the MLflow share and the peak RSS
of MNIST training, and (full size only) ``make test`` on a clean clone of the committed code.
Writes ``results.md`` and ``results.json`` to ``--out`` (default: ``bench/``) and the table to stdout.
The data come from ``BPLAB_DATA_MIRROR`` (``../shared/data`` when unset).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bplab.testing import scratch as bplab_scratch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does: the full benchmark, or a quick check that it runs."""

    quick: bool
    mnist_train_limit: int | None  # rows of the MNIST epoch benchmarks (None: all 60000)
    mnist_test_limit: int | None
    bplab_epochs: int  # epochs of bplab's loop; the first (warm-up) is not counted
    tutorial_epochs: int
    flower_steps: int
    matmul_size: int
    floor_repeats: int
    pipeline_overrides: dict[str, Any]  # params.yaml edits of the scratch copy
    pipeline_targets: list[str]  # dvc repro targets (empty: the whole pipeline)
    suite: bool = False  # time `make test` on a clean clone of the committed code


FULL = Sizes(False, None, None, 4, 3, 10000, 2048, 3, {}, [], suite=True)
QUICK = Sizes(True, 2000, 500, 3, 2, 200, 512, 1, {
    "data.mnist.preprocess.train_limit": 1000, "data.mnist.preprocess.test_limit": 200,
    **{f"train.{v}.epochs": 2 for v in ("mnist_mlp", "mnist_batchnet")},
    **{f"train.{v}.epochs": 50 for v in ("flower_logreg", "flower_twolayer", "flower_sequential", "flower_module")},
    **{f"train.{v}.epochs": 3 for v in ("boston_module", "boston_sequential", "boston_adam")},
}, ["evaluate@boston_module"])

# mnist_mlp: Linear layers (inputs, outputs); the first layer's input needs no gradient.
MNIST_LAYERS = [(784, 400), (400, 200), (200, 100), (100, 10)]
EDITED_PARAM = "train.boston_module.lr"
# The targets (issue 24), each as (key in results["ratios"], what it measures, how it is met).
TARGETS = [
    ("edit_to_result", "params edit to result: `dvc exp run -S train.boston_module.lr=...`, whole wall "
     "time, over the import floor", "<=", 2.0),
    ("train_overhead", "train-stage overhead (start-up + wind-down) over the import floor, worst stage", "<=", 0.5),
    ("evaluate_wall", "evaluate stage wall time over the import floor, worst stage", "<=", 0.5),
    ("flower_speedup", "flower_sequential, full-batch steps (10000 at full size): bplab's speed-up over the "
     "tutorial loop", ">=", 1.0),
    ("mnist_shapes_bound", "MNIST epoch over the bound at the epoch's own GEMM shapes", "<=", 1.5),
    ("cold_repro", "cold `dvc repro` over the tutorials' bare loops doing the same training", "<=", 0.6),
    ("test_suite_min", "`make test` on a clean clone (set-up included), minutes", "<=", 6.0),
    ("noop_repro_s", "no-op `dvc repro`, seconds", "<", 3.0),
    ("mnist_mlflow_share", "MLflow's share of the MNIST training stage (all MLflow calls)", "<", 0.02),
    ("mnist_peak_rss_gib", "peak RSS of MNIST training, GiB", "<", 1.5),
]
# Targets that depend on how stages start: measured with the warm runner and without it, side by side
BY_RUNNER = {"edit_to_result", "train_overhead", "evaluate_wall", "cold_repro", "noop_repro_s",
             "mnist_mlflow_share", "mnist_peak_rss_gib"}


def mirror() -> Path:
    found = bplab_scratch.data_mirror(REPO)
    if found is None:
        sys.exit("bench: no data mirror; set BPLAB_DATA_MIRROR to a directory with mnist/ and boston/")
    return found


# --- the machine's limit ---------------------------------------------------------------------

def matmul_throughput(sizes: Sizes) -> dict[str, float]:
    """FLOP/s of a large square float32 matmul (the peak) and of the MNIST epoch's own matmuls.

    The second runs exactly the GEMMs one training step of mnist_mlp at batch 64 does (forward,
    weight gradients, input gradients), back to back with nothing else: the best an eager loop
    could do with this BLAS at these shapes.
    """
    import torch

    n = sizes.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = _best_rate(lambda: a @ b, 2 * n ** 3, repeats=5, calls=3 if n >= 1024 else 30)
    batch = 64
    operands = [(torch.randn(batch, i), torch.randn(o, i), torch.randn(o), torch.randn(batch, o))
                for i, o in MNIST_LAYERS]

    def one_step() -> None:
        for k, (x, w, bias, grad) in enumerate(operands):
            torch.addmm(bias, x, w.t())
            grad.t().mm(x)
            if k:
                grad.mm(w)

    return {"peak_gflops": peak / 1e9,
            "epoch_shapes_gflops": _best_rate(one_step, train_flops_per_row() * batch, repeats=5, calls=200) / 1e9}


def _best_rate(call, flops: float, repeats: int, calls: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return flops / best


def train_flops_per_row() -> int:
    """Multiply-adds x2 of a training step per row: forward, weight gradient, input gradient (not layer 1)."""
    return sum(2 * i * o * (3 if k else 2) for k, (i, o) in enumerate(MNIST_LAYERS))


def forward_flops_per_row() -> int:
    return sum(2 * i * o for i, o in MNIST_LAYERS)


# --- MNIST epoch and flower steps -------------------------------------------------------------

def raw_mnist(scratch: Path) -> Path:
    """The mirror's MNIST decompressed where torchvision's ``MNIST(root)`` looks: root/MNIST/raw."""
    raw = scratch / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in (mirror() / "mnist").glob("*.gz"):
        (raw / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    return raw


def mnist_epoch(sizes: Sizes, raw: Path, matmul: dict[str, float]) -> dict[str, Any]:
    """Seconds per MNIST epoch (train + eval) of bplab's loop and of the tutorial's, and the bound."""
    import numpy as np
    import torch
    import tutorial

    from bplab.data import mnist
    from bplab.data.mnist import MnistPreprocess
    from bplab.models.architectures import build_model
    from bplab.params.load import load_params
    from bplab.train.loop import EpochPlan, Task, fit
    from bplab.train.optim import build_optimizer

    prepared = mnist.preprocess(raw, MnistPreprocess(train_limit=sizes.mnist_train_limit,
                                                     test_limit=sizes.mnist_test_limit))
    # The tutorial's work: it trains on every training row and evaluates on the test images each
    # epoch, so bplab's loop is timed on the same rows (its training and validation rows together).
    train = tuple(torch.from_numpy(np.concatenate(arrays)) for arrays in zip(prepared.splits["train"],
                                                                             prepared.splits["val"]))
    test = tuple(torch.from_numpy(a) for a in prepared.splits["test"])
    variant = load_params(REPO / "params.yaml").train["mnist_mlp"]
    torch.manual_seed(0)
    model = build_model(variant.model, 784, 10)
    optimizer = build_optimizer(model, variant, "train.mnist_mlp")
    records = []
    fit(model, optimizer, Task("multiclass"), train, test,
        EpochPlan(sizes.bplab_epochs, variant.batch_size, variant.eval_batch_size, variant.shuffle),
        torch.Generator().manual_seed(0), records.extend, report_every_s=0)
    bplab_epochs = [r.seconds for r in records[1:]]  # the first pays one-off costs (torch._dynamo import)
    torch.manual_seed(0)
    seed_run = tutorial.mnist_mlp(raw.parent.parent, sizes.tutorial_epochs, sizes.mnist_train_limit,
                                  sizes.mnist_test_limit)
    tutorial_epochs = seed_run["epoch_seconds"][1:] or seed_run["epoch_seconds"]
    n_train, n_test = len(train[0]), len(test[0])
    flops = n_train * train_flops_per_row() + n_test * forward_flops_per_row()
    # The fastest epoch of each: other load on a shared machine only ever slows an epoch down,
    # and it slows the tutorial's Python-bound DataLoader more than bplab's matmul-bound loop.
    bplab_s, tutorial_s = min(bplab_epochs), min(tutorial_epochs)
    peak_bound = flops / (matmul["peak_gflops"] * 1e9)
    shapes_bound = flops / (matmul["epoch_shapes_gflops"] * 1e9)
    return {
        "rows": [n_train, n_test], "gflop_per_epoch": flops / 1e9,
        "bplab_s": bplab_s, "bplab_epochs_s": bplab_epochs, "bplab_eval_acc": records[-1].metrics["val_acc"],
        "tutorial_s": tutorial_s, "tutorial_epochs_s": seed_run["epoch_seconds"],
        "tutorial_eval_acc": seed_run["eval_acc"],
        "speedup": tutorial_s / bplab_s,
        "speedup_of_medians": statistics.median(tutorial_epochs) / statistics.median(bplab_epochs),
        "bound_peak_s": peak_bound, "bound_epoch_shapes_s": shapes_bound,
        "times_peak_bound": bplab_s / peak_bound, "times_epoch_shapes_bound": bplab_s / shapes_bound,
    }


def flower_points():
    import torch

    from bplab.data.flower import FlowerDownload, generate

    spec = FlowerDownload()
    train = generate(spec.n_points, spec.petals, spec.noise, spec.seed)
    test = generate(spec.test_points, spec.petals, spec.noise, spec.test_seed)
    return [(torch.from_numpy(x).float(), torch.from_numpy(y).float()) for x, y in (train, test)]


def flower_steps(sizes: Sizes) -> dict[str, Any]:
    """flower_sequential: full-batch steps of bplab's loop (with its per-epoch eval) vs the seed's loop."""
    import torch
    import tutorial

    from bplab.models.architectures import build_model
    from bplab.params.load import load_params
    from bplab.params.schema import record_stride
    from bplab.train.loop import EpochPlan, Task, fit
    from bplab.train.optim import build_optimizer

    (x, y), test = flower_points()
    params = load_params(REPO / "params.yaml")
    variant = params.train["flower_sequential"]
    steps = sizes.flower_steps
    every = record_stride(steps, params.tracking.max_epoch_points)
    tutorial.flower_net("seq_net", x, y, 20)  # both measured warm: torch.optim's first step imports torch._dynamo
    torch.manual_seed(0)
    model = build_model(variant.model, 2, 1)
    optimizer = build_optimizer(model, variant, "train.flower_sequential")
    records = []
    started = time.perf_counter()
    fit(model, optimizer, Task("binary"), (x, y), test, EpochPlan(steps, None, None, False, every),
        torch.Generator().manual_seed(0), records.extend)
    bplab_s = time.perf_counter() - started
    torch.manual_seed(0)
    tutorial_s = tutorial.flower_net("seq_net", x, y, steps)
    return {"steps": steps, "bplab_s": bplab_s, "tutorial_s": tutorial_s, "speedup": tutorial_s / bplab_s,
            "bplab_eval_acc": records[-1].metrics["val_acc"], "record_every": every,
            "note": f"bplab evaluates on the 400 test points and counts the accuracy on the epochs it records "
                    f"(1 in {every}, as the train stage does at tracking.max_epoch_points "
                    f"{params.tracking.max_epoch_points}); the others are forward, backward and step only"}


def tutorial_loops(sizes: Sizes, raw: Path) -> dict[str, float]:
    """The seeds' bare loops doing the pipeline's training (no tracking, nothing saved), in seconds."""
    import torch
    import tutorial

    from bplab.data.boston import read_table
    from bplab.params.load import load_params

    params = load_params(REPO / "params.yaml")
    for dotted, value in sizes.pipeline_overrides.items():  # the same sizes as the pipeline run
        parts = dotted.split(".")
        if parts[0] == "train" and parts[2] == "epochs":
            params.train[parts[1]] = params.train[parts[1]].model_copy(update={"epochs": value})
    epochs = {name: v.epochs for name, v in params.train.items()}
    limits = (params.data.mnist.preprocess.train_limit, params.data.mnist.preprocess.test_limit)
    limits = tuple(sizes.pipeline_overrides.get(f"data.mnist.preprocess.{k}", v)
                   for k, v in zip(("train_limit", "test_limit"), limits))
    root = raw.parent.parent
    (x, y), _ = flower_points()
    features, target = read_table(mirror() / "boston" / "boston.csv")
    torch.manual_seed(0)
    seconds = {
        "mnist_mlp": sum(tutorial.mnist_mlp(root, epochs["mnist_mlp"], *limits)["epoch_seconds"]),
        "mnist_batchnet": sum(tutorial.mnist_batchnet(root, epochs["mnist_batchnet"], *limits)["epoch_seconds"]),
        "flower_logreg": tutorial.flower_logreg(x, y, epochs["flower_logreg"]),
        "flower_twolayer": tutorial.flower_twolayer(x, y, epochs["flower_twolayer"]),
        "flower_sequential": tutorial.flower_net("seq_net", x, y, epochs["flower_sequential"]),
        "flower_module": tutorial.flower_net("module_net", x, y, epochs["flower_module"]),
        "boston_module": tutorial.boston("mlp_model", [10, 10], features, target, epochs["boston_module"]),
        "boston_sequential": tutorial.boston("mlp_model2", [10, 10], features, target, epochs["boston_sequential"]),
        "boston_adam": tutorial.boston("test_net", [10], features, target, epochs["boston_adam"], adam_groups=True),
    }
    return seconds | {"total": sum(seconds.values())}


# --- the pipeline -----------------------------------------------------------------------------

def timed_repro(repo: Path, targets: list[str], env: dict[str, str],
                command: tuple[str, ...] | list[str] = ("dvc", "repro")) -> dict[str, Any]:
    """``dvc repro`` (or ``command``), timing each stage from its "Running stage" line to the next
    (DVC's own work included)."""
    started = time.perf_counter()
    process = subprocess.Popen([*command, *targets], cwd=repo, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stages: list[dict[str, Any]] = []
    output = []
    last = started
    for line in process.stdout:
        output.append(line)
        if match := re.match(r"Running stage '([^']+)'", line):
            now = time.perf_counter()
            if stages:
                stages[-1]["seconds"] = now - last
            stages.append({"stage": match.group(1)})
            last = now
    status = process.wait()
    ended = time.perf_counter()
    if status != 0:
        sys.exit(f"bench: {' '.join([*command, *targets])} failed ({status}):\n{''.join(output[-40:])}")
    if stages:
        stages[-1]["seconds"] = ended - last
    return {"seconds": ended - started, "stages": stages}


def pipeline(sizes: Sizes, scratch: Path, runner: str) -> dict[str, Any]:
    """Cold repro (empty cache and store), no-op repro, and one params edit made the way a user
    makes it, ``dvc exp run -S``, on the committed result of the cold run; in a scratch copy, with
    stages forked by the warm runner (``runner`` on: no runner is up at the start, so the cold
    repro pays for starting one) or each in its own process (off)."""
    repo = bplab_scratch.copy_repository(scratch / f"repo-runner-{runner}", sizes.pipeline_overrides)
    timings = scratch / f"stage-timings-{runner}.jsonl"
    mirror()
    stop_runners()
    env = bplab_scratch.stage_env(repo, BPLAB_TIMINGS=str(timings), BPLAB_RUNNER=runner)
    cold = timed_repro(repo, sizes.pipeline_targets, env)
    stages = list(map(json.loads, timings.read_text().splitlines()))
    noop = timed_repro(repo, sizes.pipeline_targets, env)
    bplab_scratch.commit(repo, "the cold run's results")
    old = yaml.safe_load((repo / "params.yaml").read_text())["train"]["boston_module"]["lr"]
    timings.unlink()
    edited = timed_repro(repo, sizes.pipeline_targets, env,
                         command=["dvc", "exp", "run", "-S", f"{EDITED_PARAM}={old * 2}"])
    edited_stages = list(map(json.loads, timings.read_text().splitlines()))
    in_stages = sum(t["total_s"] for t in edited_stages)
    return {"cold": cold, "noop": noop,
            "edit": edited | {"param": f"{EDITED_PARAM}: {old} -> {old * 2}", "stage_totals": edited_stages,
                              "dvc_and_processes_s": edited["seconds"] - in_stages},
            "train_stages": [t for t in stages if t["stage"].startswith("train@")],
            "evaluate_stages": [t for t in stages if t["stage"].startswith("evaluate@")],
            "metrics": {p.stem: json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}}


def stop_runners() -> None:
    """End this environment's warm runners (``bplab runner stop``)."""
    subprocess.run([sys.executable, "-m", "bplab.commands.main", "runner", "stop"], check=True, capture_output=True)


def runner_at_rest(idle_seconds: float = 30) -> dict[str, Any]:
    """What the warm runner left by the pipeline costs while it waits: its memory (resident, and
    proportional: pages shared with its stages counted once among them) and its CPU over
    ``idle_seconds`` of idling."""
    from bplab.commands.runner import runner_sockets
    from bplab.runner import protocol

    # The one that served the pipeline (a stage whose environment differs in what imports read
    # would have started another beside it)
    socket = max(runner_sockets(every_environment=False),
                 key=lambda path: protocol.ask(path, {"op": "status"})["served"])
    before = protocol.ask(socket, {"op": "status"})
    time.sleep(idle_seconds)
    after = protocol.ask(socket, {"op": "status"})
    rollup = Path(f"/proc/{after['pid']}/smaps_rollup").read_text()
    pss_kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return {"rss_mib": after["rss_kib"] / 1024, "pss_mib": pss_kib / 1024, "idle_seconds": idle_seconds,
            "idle_cpu_s": after["cpu_seconds"] - before["cpu_seconds"], "modules": after["modules"],
            "preload_s": after["preload_seconds"], "served": after["served"]}


def import_floor(sizes: Sizes) -> float:
    """Seconds of ``python -c "import torch, mlflow"`` (best of a few runs)."""
    runs = []
    for _ in range(sizes.floor_repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, mlflow"], check=True)
        runs.append(time.perf_counter() - started)
    return min(runs)


def test_suite(scratch: Path) -> dict[str, Any]:
    """``make test`` on a clean clone of the committed code, as CI runs it (set-up included):
    minutes, and pytest's own summary line."""
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH"}}
    env |= {"CI": "true", "BPLAB_DATA_MIRROR": str(mirror())}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    started = time.perf_counter()
    result = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    summary = next((line.strip("= ") for line in reversed(result.stdout.splitlines()) if " in " in line
                    and ("passed" in line or "failed" in line)), "no pytest summary")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    return {"minutes": minutes, "exit": result.returncode, "summary": summary, "commit": commit}


def overheads(train_stages: list[dict[str, Any]], evaluate_stages: list[dict[str, Any]],
              floor: float) -> dict[str, Any]:
    """Each training stage's start-up + wind-down and each evaluate stage's wall time against the
    import floor; MNIST's MLflow share and RSS."""
    rows = []
    for t in train_stages:
        overhead = t["startup_s"] + t["wind_down_s"]
        mlflow_s = sum(v for k, v in t["phases_s"].items() if k.startswith("mlflow"))
        metrics_s = t["phases_s"].get("mlflow_metrics", 0.0)
        rows.append({"stage": t["stage"], "total_s": t["total_s"], "training_s": t["phases_s"].get("training", 0.0),
                     "startup_s": t["startup_s"], "wind_down_s": t["wind_down_s"], "overhead_s": overhead,
                     "times_floor": overhead / floor, "mlflow_s": mlflow_s, "mlflow_share": mlflow_s / t["total_s"],
                     "metrics_share": metrics_s / t["total_s"], "phases_s": t["phases_s"],
                     "peak_rss_mib": t["peak_rss_mib"]})
    evaluates = [{"stage": t["stage"], "total_s": t["total_s"], "times_floor": t["total_s"] / floor,
                  "phases_s": t["phases_s"], "peak_rss_mib": t["peak_rss_mib"]} for t in evaluate_stages]
    return {"floor_s": floor, "train_stages": rows, "evaluate_stages": evaluates}


# --- report -----------------------------------------------------------------------------------

def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The measured value of each of :data:`TARGETS` that this run measured, with what it came from."""
    mnist, flower, pipe, over = (results[k] for k in ("mnist_epoch", "flower", "pipeline", "overheads"))
    floor = over["floor_s"]
    worst_train = max(over["train_stages"], key=lambda r: r["times_floor"])
    worst_eval = max(over["evaluate_stages"], key=lambda r: r["times_floor"])
    edit = pipe["edit"]
    bplab_median = statistics.median(mnist["bplab_epochs_s"])
    tutorial_low, tutorial_high = (bound(mnist["tutorial_epochs_s"]) / bplab_median for bound in (min, max))
    values = {
        "edit_to_result": (edit["seconds"] / floor, f"{edit['seconds']:.2f} s / {floor:.2f} s: " + ", ".join(
            f"{t['stage']} {t['total_s']:.2f} s" for t in edit["stage_totals"])
            + f", DVC and process exits {edit['dvc_and_processes_s']:.2f} s"),
        "train_overhead": (worst_train["times_floor"], f"{worst_train['stage']}: {worst_train['overhead_s']:.2f} s"),
        "evaluate_wall": (worst_eval["times_floor"], f"{worst_eval['stage']}: {worst_eval['total_s']:.2f} s"),
        "flower_speedup": (flower["speedup"], f"{flower['bplab_s']:.2f} s vs {flower['tutorial_s']:.2f} s"),
        "mnist_speedup": (min(mnist["speedup"], mnist["speedup_of_medians"]),
                          f"{mnist['bplab_s']:.3f} s vs {mnist['tutorial_s']:.3f} s: {mnist['speedup']:.2f}x; "
                          f"of medians {mnist['speedup_of_medians']:.2f}x"),
        "mnist_shapes_bound": (mnist["times_epoch_shapes_bound"],
                               f"{mnist['bplab_s']:.3f} s vs {mnist['bound_epoch_shapes_s']:.3f} s; the tutorial's "
                               f"epochs over bplab's median epoch: {tutorial_low:.2f}x to {tutorial_high:.2f}x "
                               f"({len(mnist['tutorial_epochs_s'])} epochs)"),
        "cold_repro": (pipe["cold"]["seconds"] / results["tutorial_loops"]["total"],
                       f"{pipe['cold']['seconds']:.1f} s vs {results['tutorial_loops']['total']:.1f} s"),
        "noop_repro_s": (pipe["noop"]["seconds"], ""),
    }
    if "test_suite" in results:
        suite = results["test_suite"]
        values["test_suite_min"] = (suite["minutes"] if suite["exit"] == 0 else float("inf"),
                                    f"{suite['summary']} (commit {suite['commit']}, exit {suite['exit']})")
    mnist_stage = next((r for r in over["train_stages"] if r["stage"] == "train@mnist_mlp"), None)
    if mnist_stage:
        values["mnist_mlflow_share"] = (mnist_stage["mlflow_share"], f"{mnist_stage['mlflow_s']:.2f} s of "
                                        f"{mnist_stage['total_s']:.2f} s; per-epoch metrics "
                                        f"{100 * mnist_stage['metrics_share']:.2f}%")
        values["mnist_peak_rss_gib"] = (mnist_stage["peak_rss_mib"] / 1024, f"{mnist_stage['peak_rss_mib']:.0f} MiB")
    return values


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`TARGETS` this run measured: the value, where it came from, and whether it is met."""
    measured = ratios(results)
    before = ratios({**results, "pipeline": results["pipeline_own_process"],
                     "overheads": results["overheads_own_process"]})
    met = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t}
    return [{"key": key, "target": f"{text} {op} {goal:g}", "value": measured[key][0], "detail": measured[key][1],
             "met": bool(met[op](measured[key][0], goal)),
             "own_process": before[key][0] if key in BY_RUNNER else None,
             "own_process_detail": before[key][1] if key in BY_RUNNER else None}
            for key, text, op, goal in TARGETS if key in measured]


def markdown(results: dict[str, Any]) -> str:
    m, f, p, over, loops, rest = (results[k] for k in ("mnist_epoch", "flower", "pipeline", "overheads",
                                                        "tutorial_loops", "runner_at_rest"))
    lines = [
        f"# bplab benchmark ({results['mode']})", "",
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores, torch {results['machine']['torch']} "
        f"({results['machine']['torch_threads']} threads), {results['date']}. "
        "Re-run: `make bench` (`bench/run.py`).", "",
        "## Targets", "", "Stages forked by the warm runner (`bplab.runner`, the default) and, where how stages "
        "start matters, the same measurement with each stage in its own process (`BPLAB_RUNNER=off`), in this run.",
        "", "| target | own processes | warm runner | from (warm runner) | met |", "| --- | --- | --- | --- | --- |",
        *[f"| {t['target']} | {'' if t['own_process'] is None else format(t['own_process'], '.3g')} "
          f"| {t['value']:.3g} | {t['detail']} | {'yes' if t['met'] else '**no**'} |"
          for t in results["targets"]],
        "", f"The runner at rest, after the pipeline: {rest['rss_mib']:.0f} MiB resident ({rest['pss_mib']:.0f} MiB "
        f"proportional: pages shared with the stages it forked count once among them), {rest['idle_cpu_s']:.2f} s "
        f"of CPU in {rest['idle_seconds']:.0f} s idle; it preloaded {rest['modules']} modules in "
        f"{rest['preload_s']:.1f} s and served {rest['served']} stages.",
        "", "## Training loops", "", "| measurement | bplab | tutorial loop | speed-up |", "| --- | --- | --- | --- |",
        f"| MNIST epoch (the fastest), {m['rows'][0]} + {m['rows'][1]} rows (s) | {m['bplab_s']:.3f} "
        f"| {m['tutorial_s']:.3f} "
        f"| {m['speedup']:.2f}x ({m['speedup_of_medians']:.2f}x of medians) |",
        f"| flower_sequential, {f['steps']} full-batch steps (s) | {f['bplab_s']:.3f} | {f['tutorial_s']:.3f} "
        f"| {f['speedup']:.2f}x |", "",
        f"MNIST compute bound: {m['gflop_per_epoch']:.1f} GFLOP per epoch; peak matmul "
        f"{results['matmul']['peak_gflops']:.0f} GFLOP/s gives {m['bound_peak_s']:.3f} s "
        f"(bplab at {m['times_peak_bound']:.2f}x); the epoch's own batch-64 matmuls run at "
        f"{results['matmul']['epoch_shapes_gflops']:.0f} GFLOP/s, {m['bound_epoch_shapes_s']:.3f} s "
        f"(bplab at {m['times_epoch_shapes_bound']:.2f}x). Eval accuracy after the run: bplab "
        f"{m['bplab_eval_acc']:.4f}, tutorial {m['tutorial_eval_acc']:.4f}. Flower: {f['note']}.", "",
        "## Pipeline", "",
        f"Cold `dvc repro` {p['cold']['seconds']:.1f} s (empty DVC cache and MLflow store); no-op "
        f"{p['noop']['seconds']:.2f} s; `dvc exp run -S` editing {p['edit']['param']}: {p['edit']['seconds']:.2f} s, "
        f"re-running {', '.join(s['stage'] for s in p['edit']['stages']) or 'nothing'} ("
        + ", ".join(f"{t['stage']} {t['total_s']:.2f} s" for t in p["edit"]["stage_totals"])
        + f", DVC itself and the processes' exits {p['edit']['dvc_and_processes_s']:.2f} s). The tutorials' bare "
        f"loops doing the same training: {loops['total']:.1f} s.", "",
        "| stage | wall (s) |", "| --- | --- |",
        *[f"| {s['stage']} | {s['seconds']:.2f} |" for s in p["cold"]["stages"]], "",
        "## Training stages: where the time goes", "",
        f"Floor: `python -c \"import torch, mlflow\"` = {over['floor_s']:.2f} s. Overhead = start-up (process "
        "start to the first step) + wind-down (last step to the end).", "",
        "| stage | total (s) | training | start-up | wind-down | overhead / floor | MLflow (s) | MLflow share "
        "| metrics share | peak RSS (MiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {r['stage']} | {r['total_s']:.2f} | {r['training_s']:.2f} | {r['startup_s']:.2f} | "
          f"{r['wind_down_s']:.2f} | {r['times_floor']:.2f}x | {r['mlflow_s']:.2f} | {100 * r['mlflow_share']:.1f}% "
          f"| {100 * r['metrics_share']:.2f}% | {r['peak_rss_mib']:.0f} |" for r in over["train_stages"]], "",
        "| evaluate stage | total (s) | over the floor | peak RSS (MiB) |", "| --- | --- | --- | --- |",
        *[f"| {r['stage']} | {r['total_s']:.2f} | {r['times_floor']:.2f}x | {r['peak_rss_mib']:.0f} |"
          for r in over["evaluate_stages"]], "",
        "Phases of each training stage (s): " + "; ".join(
            f"{r['stage']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items())
            for r in over["train_stages"]) + ". Not in a phase: imports, reading params and data, building the "
        "model and optimizer (torch.optim imports torch._dynamo).", "",
    ]
    if "test_suite" in results:
        suite = results["test_suite"]
        lines += ["## Test suite", "", f"`make test` on a clean clone of commit {suite['commit']} (CI=true, set-up "
                  f"included): {suite['minutes']:.1f} min, exit {suite['exit']}: {suite['summary']}.", ""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or "unknown CPU", "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where results.md/json go")
    parser.add_argument("--no-suite", action="store_true", help="leave out `make test` on a clean clone")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"mode": "quick" if sizes.quick else "full", "date": time.strftime("%Y-%m-%d"),
                               "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bplab-bench-") as tmp:
        scratch = Path(tmp)
        steps = [
            ("pipeline_own_process", "cold, no-op and edited dvc repro, each stage in its own process",
             lambda: pipeline(sizes, scratch, "off")),
            ("pipeline", "cold, no-op and edited dvc repro, stages forked by the warm runner",
             lambda: pipeline(sizes, scratch, "on")),
            ("runner_at_rest", "the warm runner at rest", lambda: runner_at_rest(2 if sizes.quick else 30)),
            ("floor", "import floor", lambda: import_floor(sizes)),
            ("matmul", "matmul throughput", lambda: matmul_throughput(sizes)),
            ("raw", "MNIST for torchvision", lambda: raw_mnist(scratch)),
            ("mnist_epoch", "MNIST epoch", lambda: mnist_epoch(sizes, results["raw"], results["matmul"])),
            ("flower", "flower steps", lambda: flower_steps(sizes)),
            ("tutorial_loops", "the tutorials' bare loops", lambda: tutorial_loops(sizes, results["raw"])),
        ]
        if sizes.suite and not args.no_suite:
            steps.append(("test_suite", "make test on a clean clone", lambda: test_suite(scratch)))
        for key, label, measure in steps:
            started = time.perf_counter()
            print(f"bench: {label} ...", file=sys.stderr, flush=True)
            results[key] = measure()
            print(f"bench: {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        del results["raw"]
    floor = results.pop("floor")
    for suffix in ("", "_own_process"):
        results[f"overheads{suffix}"] = overheads(results[f"pipeline{suffix}"].pop("train_stages"),
                                                  results[f"pipeline{suffix}"].pop("evaluate_stages"), floor)
    results["targets"] = targets(results)
    report = markdown(results)
    (args.out / "results.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
