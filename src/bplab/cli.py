"""What every stage entry point shares: user errors become one clear message and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bplab.errors import BplabError


@contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """Print a :class:`BplabError` as ``<stage>: error: <message>`` and exit 2, without a traceback."""
    try:
        yield
    except BplabError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
