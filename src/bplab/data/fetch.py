"""Fetch one file from an ordered list of sources, verified and written atomically.

Each candidate source is tried in turn: transient network faults are retried with exponential
backoff, anything else (not found, a refused login, a malformed URL, checksum mismatch,
undecodable bytes) moves on to the next source at once. The file only appears at its final path
after its SHA-256 has matched, via a temporary file and ``os.replace``, so an interruption never
leaves a half-written file behind. A login in a URL is sent as HTTP basic auth; the reasons a
source failed are redacted (:func:`bplab.tracking.store.redact`).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field

from bplab.errors import DownloadError
from bplab.outputs import write_bytes_atomic
from bplab.params.fields import Strict
from bplab.pipeline.process import progress_bar
from bplab.tracking import store


class FetchPolicy(Strict):
    """How hard a download tries each source before moving to the next (``data.<name>.download``)."""

    retries: Annotated[int, Field(gt=0, le=100)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

MIRROR_ENV = "BPLAB_DATA_MIRROR"
_CHUNK = 1 << 20


def identity(payload: bytes) -> bytes:
    """Decoder for sources that serve the file's final bytes."""
    return payload


def gunzip(payload: bytes) -> bytes:
    """Decoder for ``.gz`` sources; a truncated or corrupt stream raises ``ValueError``."""
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as exc:  # bad header or trailer, cut short, corrupt deflate body
        raise ValueError(f"not a valid gzip stream ({exc})") from None


@dataclass(frozen=True)
class Candidate:
    """One place a file may come from, and how its bytes become the file's content."""

    location: str
    decode: Callable[[bytes], bytes] = identity


@dataclass(frozen=True)
class FetchedFile:
    """What was written, and from where: logged to MLflow by the download stage."""

    name: str
    path: Path
    source: str
    sha256: str
    size: int


@dataclass
class _Attempts:
    failures: list[str] = field(default_factory=list)

    def add(self, location: str, reason: str) -> None:
        self.failures.append(f"  - {store.redact(location)}: {store.redact(reason)}")


class _Transient(Exception):
    """A fault worth retrying on the same source (timeouts, resets, 5xx, short reads)."""


class _Malformed(ValueError):
    """A URL that cannot be requested: no retry, and no quoting it (the parser's message would
    show part of a password, as in ``nonnumeric port: 's3cret@host'``)."""

    def __init__(self) -> None:
        super().__init__("not a valid URL: its host or port cannot be read (a user name or password "
                         "holding '/', '?', '#' or '@' must be percent-encoded, e.g. %2F for '/')")


def mirror_dir() -> Path | None:
    """The local mirror named by ``BPLAB_DATA_MIRROR``, if set.

    A relative path is taken from the repository's root, not the current directory: under
    ``dvc exp run --temp`` and the queue, stages run in a copy under ``.dvc/tmp/exps``.
    """
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return (path if path.is_absolute() else store.repo_root() / path).resolve()


def _is_url(location: str) -> bool:
    return location.split(":", 1)[0].lower() in {"http", "https", "file", "ftp"}


def _opener(location: str) -> tuple[str, urllib.request.OpenerDirector]:
    """The URL to request and who requests it. Credentials in an HTTP(S) URL
    (``https://alice:s3cret@host/``) are taken out of it and sent as HTTP basic auth, as curl and
    requests do: urllib would read them as part of the host. They go to that scheme, host and port
    only (not to a redirect elsewhere). Raises :class:`_Malformed` for a URL without a readable
    host or port."""
    try:
        parts = urllib.parse.urlsplit(location)
        parts.port  # noqa: B018 - reading it raises ValueError for a port that is not a number
    except ValueError:
        raise _Malformed from None
    if parts.scheme.lower() not in {"http", "https"}:
        return location, urllib.request.build_opener()
    if not parts.hostname:
        raise _Malformed
    if parts.username is None:
        return location, urllib.request.build_opener()
    server = parts.netloc.rpartition("@")[2]
    logins = urllib.request.HTTPPasswordMgrWithPriorAuth()
    logins.add_password(None, f"{parts.scheme}://{server}/", urllib.parse.unquote(parts.username),
                        urllib.parse.unquote(parts.password or ""), is_authenticated=True)
    return (urllib.parse.urlunsplit(parts._replace(netloc=server)),
            urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(logins)))


def _read(location: str, timeout_s: float, label: str) -> bytes:
    """Read all bytes of a URL or local path, with a progress bar for network transfers."""
    if not _is_url(location):
        try:
            return Path(location).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError("no such file") from None
    try:
        url, opener = _opener(location)
        request = urllib.request.Request(url, headers={"User-Agent": "bplab/0.1 (+dvc stage)"})
        with opener.open(request, timeout=timeout_s) as response:
            total = response.length
            chunks: list[bytes] = []
            with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                              leave=False, mininterval=0.5) as bar:
                while chunk := response.read(_CHUNK):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except http.client.IncompleteRead as exc:
        raise _Transient(f"transfer cut short after {len(exc.partial)} bytes") from None
    except http.client.InvalidURL:  # a host or path http.client refuses (control characters, a bad port)
        raise _Malformed from None
    except http.client.HTTPException as exc:  # not HTTP at all (wrong port, captive portal)
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, FileNotFoundError):
            raise FileNotFoundError("no such file") from None
        raise _Transient(str(reason)) from None
    except (TimeoutError, ConnectionError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    payload = b"".join(chunks)
    if total is not None and len(payload) != total:
        raise _Transient(f"transfer cut short: {len(payload)} of {total} bytes")
    return payload


def fetch_file(
    name: str,
    candidates: list[Candidate],
    sha256: str,
    dest: Path,
    policy: FetchPolicy,
) -> FetchedFile:
    """Write ``dest`` from the first candidate whose decoded bytes have the given SHA-256.

    Raises :class:`DownloadError` listing every source tried and why it failed.
    """
    attempts = _Attempts()
    for candidate in candidates:
        content = _try_candidate(name, candidate, policy, attempts)
        if content is None:
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != sha256:
            attempts.add(candidate.location, f"checksum mismatch: sha256 {digest}, expected {sha256}")
            continue
        write_bytes_atomic(dest, content)
        return FetchedFile(name, dest, store.redact(candidate.location), digest, len(content))
    raise DownloadError(
        f"could not get {name}: every source failed\n" + "\n".join(attempts.failures) + "\n"
        f"Offline? Set {MIRROR_ENV} to a directory laid out like the project's data mirror "
        f"(mnist/*.gz, boston/boston.csv), e.g. `export {MIRROR_ENV}=../shared/data`."
    )


def _try_candidate(name: str, candidate: Candidate, policy: FetchPolicy, attempts: _Attempts) -> bytes | None:
    """Decoded bytes from one source, or ``None`` after recording why it failed."""
    for attempt in range(1, policy.retries + 1):
        try:
            payload = _read(candidate.location, policy.timeout_s, name)
            return candidate.decode(payload)
        except _Transient as exc:
            if attempt == policy.retries:
                attempts.add(candidate.location, f"{exc} (gave up after {attempt} attempts)")
                return None
            time.sleep(policy.backoff_s * 2 ** (attempt - 1))
        except (OSError, ValueError) as exc:  # not found, HTTP 4xx, a malformed URL, bad gzip, unparsable table
            attempts.add(candidate.location, str(exc))
            return None
    return None
