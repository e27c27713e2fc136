"""``bplab``: the project's command line, one subcommand per task (``bplab compare``, ``bplab serve``).

Each subcommand is one entry of :data:`SUBCOMMANDS`: its help text, its examples, a function that
declares its arguments and one that runs it. Adding a subcommand is adding an entry.
Imports stay light (no torch, no mlflow at import), so ``bplab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bplab.commands import compare, diff, gc, runner, ui
from bplab.commands import lineage as lineage_command
from bplab.commands import report as report_command
from bplab.data import catalog
from bplab.errors import BplabError, ParamsError
from bplab.pipeline.process import redacted_tracebacks, this_environment_first
from bplab.sweep import search
from bplab.tracking import queries, registry, store

# Not MLflow's default 5000: that is where `mlflow ui` listens, and both are often up at once.
DEFAULT_PORT = 5001
STORE_NOTE = """\
The MLflow store is MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db at the
repository's root, as for the pipeline's stages."""


class UsageError(BplabError):
    """A command-line argument names something that does not exist or cannot be used."""


@dataclass(frozen=True)
class Subcommand:
    """One ``bplab <name>``: what ``--help`` shows, and the two functions behind it."""

    summary: str  # one line, in ``bplab --help``'s list of commands
    description: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def run_compare(args: argparse.Namespace) -> int:
    """``bplab compare``: :func:`bplab.commands.compare.run`, after checking that a tracking server answers."""
    # MLflow's client would retry a server that is down for minutes; this fails in seconds, naming it.
    store.check_reachable(store.tracking_uri())
    return compare.run(args)


def _integer(text: str, low: int, high: int, what: str) -> int:
    # ArgumentTypeError, not ValueError: argparse then prints this message, not "invalid _port value".
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return number


def _port(text: str) -> int:
    return _integer(text, 1, 65535, "a TCP port (1 to 65535)")


def _positive(text: str) -> int:
    return _integer(text, 1, sys.maxsize, "a positive integer")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab serve``'s arguments."""
    parser.add_argument("dataset", help="the dataset whose registered model to serve (boston, flower, mnist, ...)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every one)")
    parser.add_argument("--alias", default=registry.CHAMPION,
                        help="the registry alias of the version to serve (default: %(default)s)")
    parser.add_argument("--workers", type=_positive, help="uvicorn worker processes (default: MLflow's, 1)")


def known_datasets() -> list[str]:
    """The datasets this checkout defines (:func:`bplab.data.catalog.known`)."""
    return catalog.known()


def _check_dataset(name: str) -> None:
    try:
        catalog.dataset(name)
    except ParamsError:
        raise UsageError(f"unknown dataset {name!r}; the datasets are {', '.join(known_datasets())}") from None


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line when the address is taken, rather than with uvicorn's and MLflow's tracebacks."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port whose last connections are in TIME_WAIT is free to it, so to us.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve_command(args: argparse.Namespace, uri: str) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow models serve`` command line and environment that serve ``args``' model from ``uri``."""
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{args.dataset}@{args.alias}",
               "--env-manager", "local", "--host", args.host, "--port", str(args.port)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    # The resolved store, not MLflow's cwd-relative default; and MLflow starts `uvicorn` by name,
    # so this interpreter's bin directory goes first on PATH (no need to activate the venv).
    env = this_environment_first() | {store.TRACKING_ENV: uri}
    return command, env


def run_serve(args: argparse.Namespace) -> int:
    """``bplab serve``: check the dataset, the store, the alias and the port, then become the server.

    The process replaces itself with ``mlflow models serve`` (``exec``), so Ctrl-C and SIGTERM
    reach the server directly; MLflow stops its uvicorn child when it ends (``PR_SET_PDEATHSIG``).
    """
    _check_dataset(args.dataset)
    uri = store.tracking_uri()
    store.check_reachable(uri)
    version = queries.aliased_version(args.dataset, uri, args.alias)
    _check_port_free(args.host, args.port)
    command, env = serve_command(args, uri)
    print(f"bplab serve: models:/{args.dataset}@{args.alias} is version {version.version} "
          f"({version.tags.get('variant', 'variant unknown')}) in {store.redact(uri)}; "
          f"POST rows to http://{args.host}:{args.port}/invocations (Ctrl-C stops)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()  # exec discards Python's buffers
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve does not return


def ui_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab ui``'s arguments: those of ``mlflow ui`` it needs, and basic-auth."""
    parser.add_argument("--port", type=_port, default=ui.DEFAULT_PORT, help="TCP port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every one)")
    parser.add_argument("--workers", type=_positive, default=1, help="uvicorn worker processes (default: %(default)s)")
    parser.add_argument("--basic-auth", action="store_true",
                        help="require MLflow's basic-auth logins (its configuration, as `--app-name basic-auth`)")


def run_ui(args: argparse.Namespace) -> int:
    """``bplab ui``: check the port, then :func:`bplab.commands.ui.serve`."""
    _check_port_free(args.host, args.port)
    return ui.serve(args.host, args.port, args.workers, args.basic_auth)


def reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab reproduce``'s arguments."""
    parser.add_argument("run_id",
                        help="the MLflow run id of a finished training run (the run page, or models/V/run.json)")
    parser.add_argument("--any-commit", action="store_true",
                        help="rerun a run made at another git commit on this checkout's code")


def run_reproduce(args: argparse.Namespace) -> int:
    """``bplab reproduce``: :func:`bplab.commands.reproduce.reproduce`."""
    from bplab.commands import reproduce

    store.check_reachable(store.tracking_uri())
    return reproduce.reproduce(args.run_id, any_commit=args.any_commit)


def promote_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab promote``'s arguments."""
    parser.add_argument("dataset", help="the registered model: a dataset (boston, flower, mnist, ...)")
    parser.add_argument("version", help="the registered version to make champion, as the registry lists it (5)")


def run_promote(args: argparse.Namespace) -> int:
    """``bplab promote``: move ``<dataset>@champion`` to a version on purpose, saying what it held before."""
    _check_dataset(args.dataset)
    uri = store.tracking_uri()
    store.check_reachable(uri)
    queries.check_store(uri)
    before, chosen = registry.promote(args.dataset, args.version, uri)
    tags = chosen.tags
    scores = ", ".join(f"{k} {v}" for k, v in tags.items() if k.startswith(("val_", "test_")) and k != "val_digest"
                       and k != registry.TEST_DIGEST_TAG)
    print(f"bplab promote: {args.dataset}@{registry.CHAMPION} moved from "
          f"{'version ' + before if before else 'no version'} to version {chosen.version} "
          f"({tags.get('variant', 'variant unknown')}{'; ' + scores if scores else ''})")
    if tags.get(registry.COMMITTED_TAG) != "true":
        print(f"bplab promote: note: version {chosen.version} was not scored on the committed split; the next "
              f"evaluate on the committed split puts {registry.CHAMPION} back on the best version scored there",
              file=sys.stderr)
    return 0


COMPARE_ABOUT = compare.__doc__.split("\n\n")[1]  # the paragraph of the module's docstring on the table
EXAMPLES = """\
examples:
  bplab compare                          # one table per dataset: params, val and test metrics, champion
  bplab serve boston                     # models:/boston@champion on http://127.0.0.1:5001
  bplab ui                               # MLflow's UI over this project's store, on the runs table
  bplab diff models:/boston@champion <exp>   # why two runs differ: params, code, data, environment, metrics
  bplab lineage models:/mnist@champion   # the champion's model card: what it is, data, scores, origin
  bplab report                           # the study as one self-contained HTML page
  bplab reproduce <run_id>               # rerun a recorded training, metrics side by side
  bplab promote mnist 7                  # mnist@champion on version 7, on purpose
  bplab gc                               # what nothing references in MLflow and DVC's cache (--yes removes)
  bplab sweep boston_module --trials 20 -j 2 --param lr=log:1e-4:0.1   # Optuna search, DVC experiments
  bplab serve --help                     # a command's options and more examples"""

SUBCOMMANDS: dict[str, Subcommand] = {
    "reproduce": Subcommand(
        summary="rerun a recorded training run as a DVC experiment and compare its metrics",
        description=f"""\
Reads what a training run recorded (reproduce/params.yaml, its git commit), runs
`dvc exp run -f -S <key>=<value> ... train@<variant> evaluate@<variant>` with the
params that shaped it, and prints the new run's metrics beside the original's: on the
same commit, on a CPU, they are equal to the last digit. The -S values are in Hydra's
syntax, which DVC parses: +key=value for a key today's params.yaml lacks, a sub-section
(scheduler, early_stopping, param_groups) key by key. Exit status 0 when every metric
is equal, 1 when some differ, 2 when the run cannot be reproduced here or nothing
would be proved, with one line saying why:
  - an unknown run, or one made at another commit (without --any-commit);
  - a run that did not finish (RUNNING, KILLED, FAILED): no final metrics to match;
  - a run with no metric to compare (wall times and system samples are left out);
  - an interpolation, ${{...}}, in a recorded value or in today's params.yaml: DVC would
    resolve it when it writes -S values (${{oc.env:VAR}} reads a secret into the file,
    and a mirror URL would send it on); the error names the key, never the value.
The experiment's results are applied to the workspace, as `dvc exp run` does; `dvc exp
show` lists it.

{STORE_NOTE}""",
        examples="""\
  bplab reproduce 044735f6a1b24c6f9e0d1c2b3a4f5e6d
  bplab reproduce $(jq -r .run_id models/boston_module/run.json)
  bplab reproduce 044735f6a1b24c6f9e0d1c2b3a4f5e6d --any-commit   # on this checkout's code""",
        add_arguments=reproduce_arguments,
        run=run_reproduce,
    ),
    "promote": Subcommand(
        summary="move a dataset's champion alias to a registered version on purpose",
        description=f"""\
evaluate puts <dataset>@champion on the best version by the validation metric among the
versions scored on the committed split (the one HEAD's params and code make); a version
scored on another split (an uncommitted edit, a queued experiment over data.* params) is
registered but never takes the alias by itself. `bplab promote DATASET VERSION` moves the
alias to VERSION on purpose, and prints which version held it before (to move it back).
The next evaluate on the committed split puts it back on the best version scored there.
An unknown dataset or version ends with one line naming it, exit status 2.

{STORE_NOTE}""",
        examples="""\
  bplab promote mnist 7                  # mnist@champion is now version 7
  bplab promote boston 3                 # back to version 3""",
        add_arguments=promote_arguments,
        run=run_promote,
    ),
    "compare": Subcommand(
        summary="the study at a glance: one table per dataset, from MLflow",
        description=f"{COMPARE_ABOUT}\n\n{STORE_NOTE}\nSame as `python -m bplab.commands.compare`.",
        examples="""\
  bplab compare                          # each variant's latest run; also written to compare.md
  bplab compare --all                    # every finished run, e.g. a whole dvc exp sweep
  bplab compare --dataset mnist --dataset boston --out study.md""",
        add_arguments=compare.add_arguments,
        run=run_compare,
    ),
    "diff": Subcommand(
        summary="why two training runs differ: params, code, data, metrics",
        description=f"""\
Sets two training runs' records side by side, in the order a change propagates:
  params       the keys whose values differ (dotted, as in params.yaml), both values;
  code         the train stage's code files whose sha256 differ, `git diff --stat` between
               the runs' commits when both are in this checkout's history, and the changes
               that were not committed when a run trained;
  data         which of the raw data, the processed data (DVC's hashes) and the train,
               validation and test splits (content digests) changed;
  environment  Python, torch, MLflow, NumPy, DVC, platform and device, where they differ;
  metrics      final test and validation scores and each per-epoch metric's last value,
               side by side with the change (absolute and relative).
A section with nothing to report says "no difference"; one a run did not record says so.
A run is named by its id, models:/<dataset>@<alias>, models:/<dataset>/<version> or a DVC
experiment's name (its latest training run). Exit status 0 once the report is made, however
the runs differ; 2 with one line for a run that cannot be found or is not a training run.

{STORE_NOTE}""",
        examples="""\
  bplab diff 044735f6a1b24c6f9e0d1c2b3a4f5e6d 5d1e0c9b8a7f6e5d4c3b2a1f0e9d8c7b
  bplab diff models:/boston@champion my-lr-experiment --plot curves.png
  bplab diff models:/mnist/3 models:/mnist/4 --format json | jq .data.changed""",
        add_arguments=diff.add_arguments,
        run=diff.run,
    ),
    "lineage": Subcommand(
        summary="a registered model's or training run's model card: what it is, its data, scores and origin",
        description=f"""\
Prints the model card of what REF names, as evaluate writes it on every registered version
(the version's description on MLflow's model version page, and the run's model_card.md):
the network and its parameter count; the dataset, its split sizes, the DVC hashes of the
raw and processed data and the digests of the splits; the params; the validation and test
scores beside the tutorial's; the training run, its git commit (and uncommitted changes),
its DVC experiment, environment, and the registered version with the aliases it holds now;
how to load and serve it. REF is models:/<dataset>@<alias>, models:/<dataset>/<version>,
a training run's id (its latest registered version) or a DVC experiment's name. An
unknown REF ends with one line naming it, exit status 2.

{STORE_NOTE}""",
        examples="""\
  bplab lineage models:/boston@champion
  bplab lineage models:/mnist/3
  bplab lineage $(jq -r .run_id models/flower_module/run.json)""",
        add_arguments=lineage_command.add_arguments,
        run=lineage_command.run,
    ),
    "report": Subcommand(
        summary="the study as one self-contained HTML page: tables, champions' cards and pictures",
        description=f"""\
Writes one HTML file (report.html by default) with, per dataset, the table `bplab compare`
prints, the champion's model card (`bplab lineage models:/<dataset>@champion`) and the
champion run's pictures (learning curves, evaluate's plots). CSS inline, pictures embedded:
it links to nothing, so it can be attached to a pull request or mailed as it is. A store with
no finished training run ends with one line, exit status 2.

{STORE_NOTE}""",
        examples="""\
  bplab report                           # report.html
  bplab report --dataset mnist --out mnist.html
  bplab report --all                     # every finished run in the tables""",
        add_arguments=report_command.add_arguments,
        run=report_command.run,
    ),
    "gc": Subcommand(
        summary="list, then remove (--yes), what nothing references in the MLflow store and the DVC cache",
        description=f"""\
Lists what nothing references, and why; with --yes, removes it:
  runs             deleted in the MLflow UI, or FAILED or KILLED and started over
                   --older-than-days N days ago (deleted, then removed for good as
                   `mlflow gc` does, with their logged models);
  registry versions of each dataset's registered model, except the versions that hold an
                   alias (@champion) and the last --keep-versions K;
  DVC cache objects that no branch tip, tag, experiment or the workspace uses
                   (`dvc gc --workspace --all-branches --all-tags --all-experiments`;
                   --cloud also collects the DVC remote).
Whatever those rules say, a version that holds an alias stays, with its run (even FAILED or
deleted), its logged model and its data (the outputs its run's dvc.lock recorded): when no
branch tip, tag or experiment holds that data, `dvc gc` also keeps the champion's commit
(--rev), or the DVC cache is left as it is, saying why. Only bplab's experiments (<dataset>,
<dataset>-data) and registered models (<dataset>) are read. Without --yes nothing changes.
Exit status 0; 2 with one line for an option it cannot use (negative days).

Runs are removed for good by MLflow's own `mlflow gc` code, on the store's database: with a
sqlite (or other SQL) store, that is the store; with a tracking server, pass its database as
--backend-store-uri (the server must serve its artifacts, `mlflow server` by default), else
the runs are deleted on the server and stay in its database.

{STORE_NOTE}""",
        examples="""\
  bplab gc                               # the dry run: what would go, what stays, why
  bplab gc --yes                         # remove it
  bplab gc --older-than-days 30 --keep-versions 5
  bplab gc --yes --cloud                 # the DVC remote too
  MLFLOW_TRACKING_URI=http://mlflow:5000 bplab gc --yes --backend-store-uri postgresql://mlflow@db/mlflow""",
        add_arguments=gc.add_arguments,
        run=gc.run,
    ),
    "serve": Subcommand(
        summary="serve a dataset's champion model over HTTP (mlflow models serve)",
        description=f"""\
Serves models:/<dataset>@champion, the best registered version of the dataset's
model, with `mlflow models serve --env-manager local` (this environment; nothing is
installed). POST JSON {{"inputs": [[...], ...]}} to /invocations; the answer is
{{"predictions": [...]}}, one row per input row. An unknown dataset, a dataset with no
version under the alias, or a port in use ends with one line naming it, exit status 2.

{STORE_NOTE}""",
        examples="""\
  bplab serve boston                     # http://127.0.0.1:5001/invocations
  bplab serve mnist --port 5002 --workers 2
  bplab serve flower --alias champion --host 0.0.0.0
  curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
       -d '{"inputs": [[-0.397, -0.5, -1.007, -0.278, -0.395, 0.141, 0.556, -0.546, -0.508, -0.651,
                       -0.772, 0.429, -0.481]]}'""",
        add_arguments=serve_arguments,
        run=run_serve,
    ),
    "ui": Subcommand(
        summary="MLflow's UI over the project's store, experiments opening on their runs table",
        description=f"""\
Serves MLflow's UI, `mlflow server --app-name bplab-ui`, over the store the stages log to,
with the artifacts (pictures, models) where they keep them. A browser that has never chosen
between MLflow 3's GenAI and Model training views opens experiments on the runs table (no
?workflowType= in links); a browser that chose GenAI keeps it. --basic-auth serves
`--app-name bplab-ui-basic-auth`, MLflow's basic-auth app (same configuration:
MLFLOW_AUTH_CONFIG_PATH, MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_PASSWORD) with the
same landing. A port in use, or a store that is a server already, ends with one line, exit
status 2; Ctrl-C stops the server.

{STORE_NOTE}""",
        examples="""\
  bplab ui                               # http://127.0.0.1:5000
  bplab ui --port 5002
  MLFLOW_TRACKING_URI=sqlite:///other.db bplab ui
  bplab ui --basic-auth                  # MLflow's logins (MLFLOW_AUTH_CONFIG_PATH, ...)""",
        add_arguments=ui_arguments,
        run=run_ui,
    ),
    "runner": Subcommand(
        summary="show or stop the warm stage runner that starts stages without their imports",
        description="""\
Stages (`python stages/<stage>.py`, what dvc.yaml runs) are forked by a warm runner that has
imported torch, MLflow and the rest once, so a stage starts in milliseconds instead of seconds.
It starts itself on the first stage, serves every clone that uses this Python environment, exits
after BPLAB_RUNNER_IDLE seconds without work (default 900), and is replaced when the
environment's packages change. BPLAB_RUNNER=off runs stages in their own process instead.

status  each runner of this environment: its process, stages served and running, memory
stop    end them (stages they are running go on to their end); the next stage starts a new one""",
        examples="""\
  bplab runner status
  bplab runner stop
  bplab runner stop --all     # every environment's runners of this user""",
        add_arguments=runner.add_arguments,
        run=runner.run,
    ),
    "sweep": Subcommand(
        summary="search a variant's params with Optuna, each trial a DVC experiment",
        description=f"""\
Asks an Optuna study (ask/tell; TPE by default, seeded) for trials and runs each one as a
DVC experiment, `dvc exp run --queue -n <study>-t<n> -S <key>=<value> ... train@<variant>
evaluate@<variant>`, J at a time (`dvc queue start -j J`). Each trial is told the
experiment's validation metric (the dataset's champion metric, val_acc or val_rmse,
unless --metric names another validation metric; test metrics are refused), or FAIL with
the reason printed. At the end: the best params and the `dvc exp apply` line that keeps them.

--trials N is the study's size: the sweep asks until the study holds N trials. The study
lives in sweeps/<study>.journal (or --storage, an Optuna database URL): run the command
again after an interruption and it takes over the trials left running, then asks for the
rest; several sweeps on one study (same --study and --storage) share its N trials.

Each trial's MLflow run is tagged sweep_study and sweep_trial; the study has its own run,
sweep-<study>, in the dataset's experiment: best_value per trial (step = trial number)
and sweep/param_importances.png. A bad --param, variant or metric ends with one line
naming it, exit status 2.

{STORE_NOTE}""",
        examples="""\
  bplab sweep boston_module --trials 20 -j 2 --param lr=log:1e-4:0.1 --param batch_size=choice:32,64,128
  bplab sweep boston_module --trials 20 --param momentum=float:0:0.9 --param epochs=int:5:50
  bplab sweep mnist_mlp --study mlp-lr --trials 8 --param lr=log:1e-3:1 --param init=choice:default,kaiming
  bplab sweep boston_module --study shared --storage postgresql://user@db/optuna --param lr=log:1e-4:0.1""",
        add_arguments=search.add_arguments,
        run=search.run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """``bplab``'s parser: one subparser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="bplab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The PyTorch back-propagation tutorials as a DVC + MLflow pipeline: `dvc repro`\n"
        "runs it; these commands work with what it recorded in MLflow.",
        epilog=EXAMPLES)
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for name, sub in sorted(SUBCOMMANDS.items()):  # listed alphabetically in --help
        subparser = commands.add_parser(name, help=sub.summary, description=sub.description,
                                        epilog=f"examples:\n{sub.examples}",
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_arguments(subparser)
        subparser.set_defaults(run=sub.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``bplab <command>``; an error in the user's input ends with one line and exit status 2."""
    args = build_parser().parse_args(argv)
    redacted_tracebacks()
    try:
        return args.run(args)
    except BplabError as exc:
        print(f"bplab {args.command}: error: {store.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bplab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = store.refusal(exc) or store.store_failure(exc)  # an MLflow server's 401/403, a damaged store
        if message is None:
            raise
        print(f"bplab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
