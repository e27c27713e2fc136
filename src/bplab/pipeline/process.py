"""What every stage entry point shares (user errors and interrupts end with one clear message), and
how the project's commands start other programs of this environment."""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bplab.errors import BplabError
from bplab.interrupts import interrupts_deferred
from bplab.tracking.store import Terminated, redact, refusal, store_failure

if TYPE_CHECKING:
    from tqdm import tqdm


@contextmanager
def stage_process(stage: str) -> Iterator[None]:
    """The body of a stage's process: how it ends, on an error, an interrupt, or success.

    A :class:`BplabError` prints as ``<stage>: error: <message>`` (URLs in it redacted) and exits
    2, without a traceback; so do an MLflow tracking server's refusal (HTTP 401 or 403, :func:`refusal`)
    and a tracking store whose database fails (a damaged ``mlflow.db``, :func:`store_failure`).
    An interrupt (Ctrl-C, or SIGTERM turned into one by :meth:`bplab.tracking.recorder.Recorder.run`)
    exits 130 or 143, the shell's codes for those signals.

    Python's cyclic garbage collector is off while the stage starts (until :func:`started`, or
    the end): importing torch, MLflow, SQLAlchemy and matplotlib creates millions of objects that
    live as long as the process, and the collector walked them over and over, about 1.3 s of a
    training stage's start-up and 0.6 s of an evaluate stage (bench/results.md). Nothing is
    lost by it: reference counting still frees everything not in a cycle.

    When the stage's work is done, the objects alive are frozen out of the garbage collector:
    the interpreter's final collection then skips the millions that torch, MLflow and SQLAlchemy
    created at import, which saves about a second per stage process (a third of the time of
    ``python -c "import torch, mlflow"``). Files are still closed, by reference counting and
    ``atexit``, as usual. Used in-process (tests), the collector is switched back on after.
    Any other error ends the process with its traceback, redacted (:func:`redacted_tracebacks`).
    """
    redacted_tracebacks()
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    except BplabError as exc:
        print(f"{stage}: error: {redact(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"{stage}: {'terminated' if terminated else 'interrupted'}; nothing was written as a result, "
              "and the MLflow run it opened (if any) is marked KILLED", file=sys.stderr)
        raise SystemExit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
    except Exception as exc:
        # An MLflow server's 401 or 403 past the check at the run's start, or the store's database failing
        message = refusal(exc) or store_failure(exc)
        if message is None:
            raise
        print(f"{stage}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def redacted_tracebacks() -> None:
    """From now on, the traceback of an error nobody catches prints with every URL in it redacted,
    like everything else the process prints: a library's message may quote a URL with its login
    (MLflow's ``API request to http://user:password@host/... failed``)."""
    sys.excepthook = _print_redacted


def _print_redacted(kind: type[BaseException], value: BaseException, trace: object) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, trace))))


def progress_bar(**options: object) -> tqdm:
    """A tqdm progress bar (``tqdm.auto``), made with interrupts deferred (see
    :func:`bplab.interrupts.interrupts_deferred`): a Ctrl-C or SIGTERM at that instant ends the stage cleanly."""
    from tqdm.auto import tqdm

    with interrupts_deferred():
        return tqdm(**options)


def started() -> None:
    """The end of a stage's start-up (see :func:`stage_process`): what start-up created is frozen
    out of the garbage collector, which is switched on again for the long work that follows (a
    training loop), so that whatever that work leaves in reference cycles is reclaimed."""
    gc.freeze()
    gc.enable()


def this_environment_first() -> dict[str, str]:
    """The environment, with this interpreter's bin directory first on ``PATH``: a child that starts
    ``python``, ``dvc`` or ``uvicorn`` by name (DVC's stages and queue workers, MLflow's server)
    then runs this environment's, whether or not it is activated."""
    return {**os.environ, "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
