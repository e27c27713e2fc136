"""Interrupts (SIGINT, SIGTERM) held back while work that must not be cut in half runs."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block take effect as it ends (the first of them, with
    the handler that was in place). An exception raised by a signal's handler strikes wherever the
    main thread is: in the middle of building an object (a tqdm bar's ``__del__`` then prints a
    traceback), or inside a call to the tracking store (SQLAlchemy then left a sqlite connection
    holding its lock, and marking the run KILLED waited 20 s for it and failed). Main thread only,
    as signals are; blocks nest.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in _INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])
