"""``bplab sweep <variant>``: a search over params driven by Optuna, each trial a real DVC experiment.

The sweep asks Optuna's study for trials (ask/tell; TPE by default, seeded), queues each as
``dvc exp run --queue -n <study>-t<number> -S key=value ... train@<variant> evaluate@<variant>``,
runs them with ``dvc queue start -j J``, and tells the study each one's validation metric (the
dataset's champion metric, ``val_acc`` or ``val_rmse``, unless ``--metric`` names another
validation metric), read from the experiment's ``metrics/<variant>.json``. The test metrics are
never an objective: a sweep that chose on them would report an optimistically biased score. A
trial whose experiment fails is told FAIL, with the reason printed.

``--trials N`` is the study's size: the sweep asks for trials until the study holds N, keeping up
to J of its own running, and ends when they have finished. Run again after an interruption, it
takes over the trials its dead predecessor left running (their experiments went on in DVC's
queue, or are queued now if they never were), then asks for the rest. Several sweeps on one study
(same ``--study`` and ``--storage``) share the N trials: Optuna's storage numbers each trial once,
and the number names its experiment. Sweeps asking at the very same instant can take the study a
few trials past N, as Optuna's own ``MaxTrialsCallback`` can.

Imports stay light: Optuna, MLflow and the params models are imported when a sweep runs, not by
``bplab --help``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bplab.data import catalog
from bplab.errors import BplabError
from bplab.params.metrics import higher_is_better
from bplab.sweep import dvc_queue
from bplab.timings import StageClock
from bplab.tracking import store

if TYPE_CHECKING:
    from bplab.sweep.space import Dimension

POLL_S = 1.0  # between two looks for finished experiments (git refs: milliseconds)
STATUS_EVERY = 5  # polls per `dvc queue status` (about 0.5 s of CPU), which tells failures
GONE_LISTINGS = 2  # listings in a row an experiment may be neither queued nor done before its trial fails
UNQUEUED_S = 300  # a trial this old with no experiment name lost its sweep between ask and queue
# The trial's user attrs: which sweep process holds it (host, clone, pid), and its DVC experiment.
HOST, REPO, PID, EXP, BASELINE = "sweep_host", "sweep_repo", "sweep_pid", "dvc_exp", "dvc_baseline"
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,80}")


class SweepError(BplabError):
    """A sweep that cannot start: a bad study name, an unknown variant or metric."""


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab sweep``'s arguments."""
    parser.add_argument("variant", help="the variant to tune: a key under train: in params.yaml")
    parser.add_argument("--param", action="append", required=True, metavar="KEY=KIND:ARGS",
                        help="a key under train.<variant> (or a full params key) and its range: log:LO:HI, "
                             "float:LO:HI, int:LO:HI or choice:A,B,C; repeat for each key")
    parser.add_argument("--trials", type=_count, default=10,
                        help="how many trials the study should hold (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=_count, default=1,
                        help="experiments running at once, `dvc queue start -j` (default: %(default)s)")
    parser.add_argument("--study", help="the study's name (default: the variant); experiments are <study>-t<n>")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage: a journal file (default: sweeps/<study>.journal) or a "
                             "database URL (sqlite:///sweeps.db, postgresql://user@host/db) for several machines")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int,
                        help="sampler seed; trial n draws with seed + n (default: params.yaml's seed)")
    parser.add_argument("--metric", help="the validation metric to optimize (default: the dataset's champion "
                                         "metric, e.g. val_acc); test metrics are refused")
    parser.add_argument("--heartbeat", type=_count, default=30, metavar="SECONDS",
                        help="with a database --storage: each worker marks its running trials alive this often; "
                             "a trial silent for 4 of them is failed and its params run again by any worker "
                             "(default: %(default)s)")
    parser.add_argument("--push", metavar="GIT_REMOTE",
                        help="share each finished trial: `dvc exp push GIT_REMOTE <exp>` (its git commit to "
                             "that remote, its outputs to the default DVC remote)")


@dataclass(frozen=True)
class Setup:
    """Everything a sweep needs to know before it asks for its first trial."""

    repo: Path
    variant: str
    dataset: str
    metric: str
    maximize: bool
    dimensions: tuple[Dimension, ...]
    raw: dict[str, Any]  # params.yaml as read
    study: str
    trials: int
    jobs: int
    sampler: str
    seed: int
    heartbeat_s: int = 30
    push: str | None = None

    @property
    def targets(self) -> list[str]:
        """The stages each trial runs (DVC adds their upstream stages when those are out of date)."""
        return [f"train@{self.variant}", f"evaluate@{self.variant}"]


def _objective(dataset: catalog.Dataset, name: str, metric: str | None) -> tuple[str, bool]:
    """The validation metric a sweep optimizes, and whether to maximize it."""
    metric = metric or dataset.champion.selection
    if metric in dataset.test_metrics:
        raise SweepError(f"--metric {metric}: the test split is reported, never optimized; use the validation "
                         f"metric val_{metric.removeprefix('test_')}")
    if metric not in dataset.val_metrics:
        raise SweepError(f"--metric {metric}: {name} has the validation metrics {', '.join(dataset.val_metrics)}")
    return metric, higher_is_better(metric)


def setup(args: argparse.Namespace) -> Setup:
    """Check the command line against params.yaml; every refusal names what is wrong."""
    from bplab.sweep import space  # pydantic and the params models: not needed by `bplab --help`

    repo = store.repo_root()
    raw, params = space.read_params(repo / "params.yaml")
    variant = params.variant(args.variant)
    metric, maximize = _objective(catalog.dataset(variant.dataset), variant.dataset, args.metric)
    dimensions = [space.parse(spec, args.variant) for spec in args.param]
    space.check(dimensions, raw, args.variant)
    study = args.study or args.variant
    if not _STUDY_NAME.fullmatch(study):
        raise SweepError(f"--study {study!r}: use letters, digits, _ and - (it names DVC experiments)")
    dvc_queue.head(repo)  # experiments need a commit to start from: say so before asking for trials
    return Setup(repo, args.variant, variant.dataset, metric, maximize, tuple(dimensions), raw, study,
                 args.trials, args.jobs, args.sampler, params.seed if args.seed is None else args.seed,
                 args.heartbeat, args.push)


def say(line: str) -> None:
    """Print a line of the sweep's report now (the output is often a pipe), URLs redacted (a failed
    trial's reason quotes DVC's or a stage's error)."""
    print(store.redact(line), flush=True)


@dataclass
class Pending:
    """A trial whose DVC experiment is queued or running."""

    number: int
    trial_id: int  # the storage's id, which heartbeats name
    name: str  # the DVC experiment
    baseline: str  # the commit it was queued on
    gone: int = 0  # listings in a row that found it neither queued nor done


def worker(attrs: dict[str, Any]) -> str:
    """The sweep process a trial's user attrs name: ``host:clone pid N``."""
    return f"{attrs.get(HOST, '?')}:{attrs.get(REPO, '?')} pid {attrs.get(PID, '?')}"


@dataclass
class Sweeper:
    """One sweep process: asks, queues, waits, tells; with a database storage, also beats for its
    running trials and hands the trials of workers that stopped beating to whoever asks next."""

    setup: Setup
    study: Any  # optuna.Study
    run_id: str  # the study's MLflow run
    storage: Any = None  # the storage object when it records heartbeats (optuna_study.beats)
    takeovers: Any = None  # optuna_study.Takeovers of that storage
    pending: dict[int, Pending] = field(default_factory=dict)
    workers_started: bool = False
    clock: StageClock = field(default_factory=lambda: StageClock("bplab sweep"))

    def _exp_name(self, number: int) -> str:
        return f"{self.setup.study}-t{number}"

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        """Time one call to the study's storage (``ask``, ``tell``) or to the remotes (``push``):
        the sweep's clock keeps each, for ``BPLAB_TIMINGS`` (``bench/team_sweep.py``)."""
        started = time.perf_counter()
        with self.clock.phase(name):
            yield
        self.clock.samples.setdefault(f"{name}_s", []).append(time.perf_counter() - started)

    def _mark(self, set_attr: Any) -> None:
        """Record this process as the holder of a trial (``set_attr``: its ``set_user_attr``)."""
        set_attr(HOST, socket.gethostname())
        set_attr(REPO, str(self.setup.repo))
        set_attr(PID, os.getpid())

    def _queue(self, number: int, trial_id: int, name: str, values: dict[str, Any], baseline: str) -> None:
        """Queue trial ``number``'s experiment and wait for it; tell FAIL when DVC refuses it."""
        from bplab.sweep import space

        s = self.setup
        overrides = [space.override(d.key, values[d.name], space.present(s.raw, d.key))
                     for d in s.dimensions]
        try:
            dvc_queue.enqueue(s.repo, name, overrides, s.targets)
        except dvc_queue.DvcFailed as exc:
            self._tell(number, name, None, f"dvc exp run --queue refused it: {exc}")
            return
        self.pending[number] = Pending(number, trial_id, name, baseline)
        self._beat(self.pending[number])
        say(f"trial {number} queued as {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))

    def ask(self) -> None:
        """Ask the study for a trial, with every --param drawn (or those of a lost trial it runs
        again), and queue its experiment."""
        from bplab.sweep import optuna_study

        distributions = {d.name: d.distribution() for d in self.setup.dimensions}
        with warnings.catch_warnings():  # bplab beats for its trials itself, outside Study.optimize
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            with self._timed("ask"):
                trial = self.study.ask(fixed_distributions=distributions)
        name = self._exp_name(trial.number)
        self._mark(trial.set_user_attr)
        trial.set_user_attr(EXP, name)
        baseline = dvc_queue.head(self.setup.repo)  # experiments queued now start from HEAD
        trial.set_user_attr(BASELINE, baseline)
        frozen = self.study._storage.get_trial(trial._trial_id)  # a Trial shows no system attrs
        if (lost := optuna_study.retried_from(frozen)) is not None:
            say(f"trial {trial.number} runs the params of lost trial {lost} again")
        self._queue(trial.number, trial._trial_id, name, dict(trial.params), baseline)

    def _claim(self, trial: Any) -> None:
        """Mark a running trial as this process's, so that other sweeps starting now leave it."""
        from optuna.trial import Trial

        self._mark(Trial(self.study, trial._trial_id).set_user_attr)  # a FrozenTrial's storage id has no public name

    def recover(self) -> None:
        """Take over the trials that a sweep of this clone, now dead, left running: wait for their
        experiments, or queue those it never queued. A trial that lost its sweep before it was
        named is told FAIL. Trials of live sweeps, or of other clones, are left to them (with a
        database storage, those of a worker that stopped are failed and run again by heartbeat)."""
        from optuna.trial import TrialState

        names = {d.name for d in self.setup.dimensions}
        listed = None
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if EXP not in attrs:
                if time.time() - trial.datetime_start.timestamp() > UNQUEUED_S:
                    self._tell(trial.number, "", None, "its sweep stopped before queueing it")
                continue
            # a trial of this clone without a readable pid lost its sweep before that recorded its pid: taken over
            if (attrs.get(HOST) != socket.gethostname() or attrs.get(REPO, str(self.setup.repo)) != str(self.setup.repo)
                    or store.process_alive(attrs.get(PID))):
                continue
            self._claim(trial)
            listed = dvc_queue.statuses(self.setup.repo) if listed is None else listed
            pending = Pending(trial.number, trial._trial_id, attrs[EXP], attrs.get(BASELINE, ""))
            if dvc_queue.state(self.setup.repo, pending.baseline, pending.name, listed) != "missing":
                self.pending[trial.number] = pending
                self._beat(pending)
                say(f"trial {trial.number}: taking over {pending.name} from a sweep that stopped")
            elif names == set(trial.params):
                say(f"trial {trial.number}: its sweep stopped before queueing it; queueing it now")
                self._queue(trial.number, trial._trial_id, pending.name, dict(trial.params),
                            dvc_queue.head(self.setup.repo))
            else:
                self._tell(trial.number, pending.name, None, "its sweep stopped before queueing it, and its "
                           f"params {sorted(trial.params)} are not this sweep's {sorted(names)}")

    def _beat(self, pending: Pending) -> None:
        """Tell a database storage that this trial's worker is alive."""
        if self.storage is not None:
            self.storage.record_heartbeat(pending.trial_id)

    def beat_forever(self, stop: threading.Event) -> None:
        """Each heartbeat until ``stop`` is set: beat for every pending trial, then fail the
        running trials of workers that stopped beating (Optuna's heartbeat check; their params
        wait for the next ask of any worker). A thread's body: the main thread may wait for
        seconds on one `dvc` command, and a lost trial is found all the same."""
        from bplab.sweep import optuna_study

        while not stop.wait(self.setup.heartbeat_s):
            for pending in list(self.pending.values()):
                self._beat(pending)
            optuna_study.fail_lost_trials(self.study)  # after beating: never this worker's own trials

    def find_lost(self) -> bool:
        """Say which trials the heartbeat thread found lost since last asked; whether any was."""
        from bplab.sweep import optuna_study

        if self.takeovers is None:
            return False
        lost = self.takeovers.take()
        for trial in lost:
            say(f"trial {trial.number} lost its worker ({worker(trial.user_attrs)}: no heartbeat for "
                f"{optuna_study.HEARTBEAT_GRACE * self.setup.heartbeat_s} s): told FAIL, its params run again")
        return bool(lost)

    def _tell(self, number: int, name: str, value: float | None, reason: str = "") -> None:
        """Tell the study how trial ``number`` ended, print it, and tag its MLflow run."""
        from optuna.trial import TrialState

        from bplab.tracking import sweep_runs

        if value is None:
            with self._timed("tell"):
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            say(f"trial {number} failed: {reason}")
        else:
            with self._timed("tell"):
                self.study.tell(number, value, skip_if_finished=True)
            say(f"trial {number}: {self.setup.metric} {value:.6g} ({name})")
            self._push(number, name)
        if name and sweep_runs.tag_trial(self.setup.dataset, name, self.setup.study, number) is None \
                and value is not None:
            say(f"trial {number}: no MLflow run is tagged dvc_exp={name}; its study tags are not set")
        sweep_runs.log_progress(self.run_id, self.study.get_trials(deepcopy=False), self.setup.maximize)

    def _push(self, number: int, name: str) -> None:
        """``dvc exp push`` a finished trial's experiment when the sweep shares them (``--push``)."""
        if not self.setup.push:
            return
        try:
            with self._timed("push"):
                dvc_queue.push(self.setup.repo, self.setup.push, name)
        except dvc_queue.DvcFailed as exc:
            say(f"trial {number}: not shared: {exc}")
            return
        say(f"trial {number}: pushed {name} to {self.setup.push} in {self.clock.samples['push_s'][-1]:.1f} s")

    def _outcome(self, pending: Pending, state: str) -> tuple[float | None, str]:
        """A finished experiment's objective, or ``None`` and why there is none."""
        s = self.setup
        if state == "failed":
            return None, dvc_queue.failure(s.repo, pending.name)
        if state == "missing":
            return None, f"experiment {pending.name} is neither queued nor done (removed from the queue?)"
        metrics = dvc_queue.read_json(s.repo, pending.baseline, pending.name, f"metrics/{s.variant}.json")
        value = metrics.get(s.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"metrics/{s.variant}.json has {s.metric} = {value!r}"
        return float(value), ""

    def wait(self) -> None:
        """Poll until at least one pending trial has finished, and tell each that has, or until a
        lost trial's params wait to run again. A finished experiment is a git ref (cheap to look
        for); DVC's queue, asked less often, tells failures."""
        polls = 0
        while True:
            listed = dvc_queue.statuses(self.setup.repo) if polls % STATUS_EVERY == 0 else None
            polls += 1
            finished = []
            for pending in self.pending.values():
                state = dvc_queue.state(self.setup.repo, pending.baseline, pending.name, listed)
                if listed is not None:  # "pending" without a listing only means "not done": no news
                    pending.gone = pending.gone + 1 if state == "missing" else 0
                if state in {"done", "failed"} or pending.gone >= GONE_LISTINGS:
                    finished.append((pending, state))
            for pending, state in finished:
                del self.pending[pending.number]
                try:
                    value, reason = self._outcome(pending, state)
                except dvc_queue.DvcFailed as exc:
                    value, reason = None, str(exc)
                self._tell(pending.number, pending.name, value, reason)
            if self.find_lost() or finished:
                return
            time.sleep(POLL_S)

    def _others_running(self) -> list[int]:
        """With heartbeats, the running trials of other workers: the study is not done until they
        end or their worker is found lost (its trials then run here or elsewhere)."""
        from optuna.trial import TrialState

        if self.storage is None:
            return []
        return [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]

    def _room(self) -> int:
        """How many trials to ask for now: lost trials' params waiting to run again, and new ones
        while the study holds fewer than N (a lost trial run again counts once)."""
        from optuna.trial import TrialState

        from bplab.sweep import optuna_study

        trials = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        new = self.setup.trials - (len(trials) - len(optuna_study.retried_away(trials)))
        return max(0, min(max(new, 0) + waiting, self.setup.jobs - len(self.pending)))

    def run(self) -> None:
        """Keep up to J trials of this sweep running until the study holds N and they have finished
        (with heartbeats: until every trial of the study has)."""
        announced: list[int] = []
        while True:
            asked = self._room()
            for _ in range(asked):
                self.ask()
            if not self.pending:
                others = self._others_running()
                if not others:
                    return
                if others != announced:
                    say(f"waiting for trials {', '.join(map(str, others))} of other workers")
                    announced = others
                if not self.find_lost():
                    time.sleep(POLL_S)
                continue
            if asked or not self.workers_started:
                dvc_queue.start(self.setup.repo, self.setup.jobs)
                self.workers_started = True
            self.wait()


def _record(recorder: Any, s: Setup, study: Any, importances: dict[str, float] | None, line: str) -> None:
    """What the study found, on its MLflow run: the best trial as tags and under the metric's own
    name (so `bplab compare` shows it), the importances, their picture, and every trial as JSON."""
    from bplab.sweep import optuna_study

    recorder.set_tags({"param_importances": line})
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "dvc_exp": t.user_attrs.get(EXP)} for t in study.get_trials(deepcopy=False)]
    recorder.log_dict({"study": s.study, "metric": s.metric, "trials": trials}, "sweep/trials.json")
    if importances:
        recorder.log_metrics({f"importance/{name}": value for name, value in importances.items()})
        recorder.log_figures({"param_importances.png": optuna_study.importance_figure(study, s.metric)}, folder="sweep")
    if any(t["state"] == "COMPLETE" for t in trials):
        best = study.best_trial
        recorder.set_tags({"best_trial": best.number, "best_exp": best.user_attrs.get(EXP, ""),
                           "best_value": best.value})
        recorder.log_metrics({s.metric: best.value})


def trial_table(trials: list[Any], metric: str) -> str:
    """Every trial of the study: its state, value, experiment and the worker (host:clone) that held it last."""
    from tabulate import tabulate

    from bplab.sweep import optuna_study

    again = {optuna_study.retried_from(t): t.number for t in trials if optuna_study.retried_from(t) is not None}
    rows = [(t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}", t.user_attrs.get(EXP, ""),
             f"{t.user_attrs.get(HOST, '')}:{t.user_attrs.get(REPO, '')}",
             f"lost; run again as trial {again[t.number]}" if t.number in again else
             f"the params of lost trial {optuna_study.retried_from(t)}" if optuna_study.retried_from(t) is not None
             else "") for t in trials]
    return tabulate(rows, headers=["trial", "state", metric, "experiment", "worker", ""], tablefmt="simple")


def report(s: Setup, study: Any, recorder: Any) -> int:
    """Print the study's outcome and the `dvc exp apply` line that keeps its best params; 1 when
    no trial has completed."""
    from bplab.sweep import optuna_study

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    say(f"study {s.study}: {len(trials)} trials (" + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + ")")
    say(trial_table(trials, s.metric))
    importances, line = optuna_study.importances(study)
    _record(recorder, s, study, importances, line)
    say(line)
    if not states.get("complete"):
        say("no trial has completed: nothing to apply")
        return 1
    best = study.best_trial
    keys = {d.name: d.key for d in s.dimensions}
    exp = best.user_attrs.get(EXP, f"{s.study}-t{best.number}")
    say(f"best: trial {best.number}, {s.metric} {best.value:.6g} ({'max' if s.maximize else 'min'} of "
        f"{states['complete']} complete trials), experiment {exp}:")
    for name, value in best.params.items():
        say(f"  {keys.get(name, name)} = {value}")
    say(f"keep it: dvc exp pull {s.push} {exp} && dvc exp apply {exp}" if s.push else f"keep it: dvc exp apply {exp}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``bplab sweep``: check the command line, open the study and its MLflow run, recover what a
    stopped sweep left, run the trials, report."""
    from bplab.sweep import optuna_study
    from bplab.tracking import sweep_runs

    s = setup(args)
    store.check_reachable(store.tracking_uri())
    takeovers = optuna_study.Takeovers()
    where, shown = optuna_study.storage(args.storage, s.repo, s.study, s.heartbeat_s, takeovers)
    study, existed = optuna_study.open_study(s.study, where, shown, s.maximize, optuna_study.sampler(s.sampler, s.seed),
                                            {"variant": s.variant, "metric": s.metric})
    direction = "maximize" if s.maximize else "minimize"
    say(f"study {s.study} in {shown} ({'resumed with ' + str(len(study.trials)) + ' trials' if existed else 'new'}): "
        f"{direction} {s.metric} of {s.variant}, {s.sampler} sampler, seed {s.seed}, up to {s.jobs} at a time")
    tags = {"dataset": s.dataset, "stage": "sweep", "sweep_variant": s.variant, "sweep_metric": s.metric,
            "sweep_direction": direction, "sweep_sampler": f"{s.sampler} seed {s.seed}",
            "sweep_space": " ".join(d.spec for d in s.dimensions)}
    with sweep_runs.study_run(s.dataset, s.study, shown, tags) as recorder:
        sweeper = Sweeper(s, study, recorder.run_id, where if optuna_study.beats(where) else None, takeovers)
        stop = threading.Event()
        if sweeper.storage is not None:
            threading.Thread(target=sweeper.beat_forever, args=(stop,), name="sweep-heartbeat", daemon=True).start()
        try:
            sweeper.recover()
            sweeper.run()
        except KeyboardInterrupt:
            if sweeper.pending:
                print(f"bplab sweep: experiments {', '.join(p.name for p in sweeper.pending.values())} go on in "
                      "DVC's queue (`dvc queue status`); the same command again collects them", file=sys.stderr)
            raise
        finally:
            stop.set()
        outcome = report(s, study, recorder)
        sweeper.clock.finish()  # one line on stderr, and a JSON line in $BPLAB_TIMINGS when set
        return outcome
