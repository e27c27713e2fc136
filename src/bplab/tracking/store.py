"""MLflow conventions of the pipeline: where the store is, how runs are tagged, how URIs are shown.

Nothing here imports mlflow: :mod:`bplab.tracking.recorder` is the one module that writes to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bplab.errors import TrackingRefused, TrackingUnavailable

TRACKING_ENV = "MLFLOW_TRACKING_URI"
# How MLflow's client logs in to a tracking server (besides plugins): basic auth, or a bearer token.
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
# What check_reachable asks: any user may, and MLflow's basic-auth app checks the credentials first.
_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# The start of the body of MLflow's 403 for a Host header its `--allowed-hosts` does not list
# (mlflow.server.security_utils.INVALID_HOST_MSG): the server refused the address, not the user.
_HOST_REFUSED = "Invalid Host header"
# The experiment tag that tells MLflow 3's UI an experiment is for model training, not GenAI:
# "custom_model_development" is the "Machine learning" kind of the UI's ExperimentKind (3.17.2's
# build). With it the UI does not guess the kind from the runs and traces; a kind a user picks in
# the UI is kept. 3.17's UI reads it to pick the view only with its GenAI / Model-training switch
# turned off (a build flag, on in 3.17): there the view follows the switch, which a browser
# remembers, or `?workflowType=machine_learning` in the link.
EXPERIMENT_KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}
_EXPS_TMP = (".dvc", "tmp", "exps")
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
# How every bplab process's MLflow client behaves, set in the environment before mlflow is imported
# (values a user sets win). MLflow retries a dead server for about four minutes by default; a stage
# should ride out a server restart (3 to 7 s measured, PostgreSQL or sqlite behind it) and
# otherwise fail within seconds, to resume on the next `dvc repro`: 4 retries after waits of 0, 2,
# 4 and 8 s (plus up to 1 s of MLflow's jitter each) hold out for 14 to 18 s.
# MLflow 3.17's usage telemetry is off: it phones home from a thread, and where it cannot (these
# machines have no route out) the thread deletes a variable from os.environ while other threads read
# the environment (requests looks up proxies in it on every call). Under load, a training's
# metrics writer died of it: KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'.
CLIENT_SETTINGS = {RETRIES_ENV: "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
for _name, _value in CLIENT_SETTINGS.items():
    os.environ.setdefault(_name, _value)


# MLflow prints "View run ... at: <tracking URI>/#/experiments/..." when a run on a server ends,
# with the URI as it was given.
LINKS_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def hide_run_links(uri: str) -> None:
    """Keep MLflow from printing links to runs under ``uri`` when they would show a login or a query
    string (``http://alice:s3cret@host``): :func:`redact` cannot reach what MLflow prints itself."""
    if redact(uri) != uri:
        os.environ[LINKS_ENV] = "true"


def data_experiment(dataset: str) -> str:
    """The experiment of ``dataset``'s data-stage runs (download, preprocess); its training runs
    go to the experiment named after the dataset itself."""
    return f"{dataset}-data"


def repo_root(start: Path | None = None) -> Path:
    """The DVC repository's root directory.

    ``dvc exp run --temp`` and queued experiments run in a copy under ``<repo>/.dvc/tmp/exps/``;
    from there the root is the original repository, so their MLflow records are not lost with
    the copy.
    """
    here = (start or Path.cwd()).resolve()
    root = next((p for p in (here, *here.parents) if (p / ".dvc").is_dir()), here)
    parts = root.parts
    for i in range(len(parts) - len(_EXPS_TMP) + 1):
        if parts[i: i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return root


def default_tracking_uri() -> str:
    """MLflow's default store, ``sqlite:///mlflow.db``, anchored at the repository root."""
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else :func:`default_tracking_uri`."""
    return os.environ.get(TRACKING_ENV) or default_tracking_uri()


def opened_in_process(uri: str) -> bool:
    """Whether MLflow's client opens the store ``uri`` itself through SQLAlchemy (sqlite,
    PostgreSQL, MySQL, SQL Server), rather than talking to a server over HTTP."""
    return urllib.parse.urlsplit(uri).scheme.split("+")[0] in {"sqlite", "postgresql", "mysql", "mssql"}


def client(uri: str | None = None) -> Any:
    """An MLflow client of the store ``uri``, or (``None``) of the store MLflow is set to: the one
    place bplab makes one. ``import mlflow`` costs seconds, so it happens here, when one is needed."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def ready_client(uri: str | None = None) -> Any:
    """A client of the store ``uri`` (default: :func:`tracking_uri`) that answers: a server that does
    not fails within seconds, naming it (:func:`check_reachable`); a sqlite store has its tables,
    made by one process at a time (:func:`_sqlite_setup_lock`). Other stores get no extra call."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    if not uri.startswith("sqlite:///"):
        return client(uri)
    with _sqlite_setup_lock(uri):  # making the client opens the store, whose first use creates its schema
        ready = client(uri)
        ready.search_experiments(max_results=1)
    return ready


def artifact_location(experiment: str) -> str | None:
    """Where a new experiment's artifacts go: the repository's ``mlartifacts/`` with the default store."""
    # With the default local store, pin artifacts to the repository root too (MLflow would use
    # ./mlruns of whatever directory created the experiment); a server decides for itself.
    # Compared by value: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI itself.
    if tracking_uri() != default_tracking_uri():
        return None
    return (repo_root() / "mlartifacts" / experiment).as_uri()


# A URL runs from its scheme to the next whitespace (a password may hold any character but
# whitespace, so nothing shorter is safe).
_WORD = re.compile(r"\S+")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def redact(text: str) -> str:
    """``text`` fit to print or log: every URL in it without credentials, query string or fragment
    (``http://***@host:5000/path``); the rest of the text as it is. ``text`` may be one URL or any
    message that holds some.

    A URL runs from its scheme to the next whitespace. It has credentials as soon as either
    grammar that reads URLs here would find some: SQLAlchemy's (a username without ``:`` or ``/``,
    then ``:`` and a password with any character, ``/``, ``?`` and ``#`` included, up to an ``@``)
    or the RFC's, which urllib and requests follow (an ``@`` before the first ``/``, ``?`` or
    ``#``). Everything from the scheme's ``://`` to the URL's last ``@`` is then hidden, so no
    part of the password shows whichever ``@`` ends it; that hides too much of a URL such as
    ``https://host:8080/a@b`` (SQLAlchemy would read ``8080/a`` as its password), never too little.
    """
    return _WORD.sub(_redact_word, text) if "://" in text else text


def _redact_word(found: re.Match[str]) -> str:
    """:func:`redact` of a run of text without whitespace: each URL in it, the last first, so that
    a URL that runs into the next one (``a://u:p@h,b://...``) sees that one redacted already."""
    word = found.group()
    starts, at = [], word.find("://")
    while at >= 0:  # found by hand, in linear time: a regex would backtrack over long runs of letters
        start = at
        while start > 0 and word[start - 1] in _SCHEME_CHARS:
            start -= 1
        starts.append(start)
        at = word.find("://", at + 3)
    for start in reversed(starts):
        word = word[:start] + _redact_url(word[start:])
    return word


def _redact_url(url: str) -> str:
    """``url`` (from its scheme to the end of its word) without credentials, query string or fragment."""
    scheme, _, rest = url.partition("://")
    host = 0
    first_at = rest.find("@")
    if first_at >= 0 and "/" not in rest[:first_at].split(":", 1)[0]:
        rest, host = "***" + rest[rest.rfind("@"):], len("***@")
    cut = [i for i in (rest.find("?", host), rest.find("#", host)) if i >= 0]
    return f"{scheme}://{rest[:min(cut)] if cut else rest}"


def redact_all(value: Any) -> Any:
    """:func:`redact` applied to every string inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(item) for item in value)
    return value


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when an HTTP tracking server does not answer or refuses the credentials.

    MLflow's own client retries with backoff for minutes before giving up, and a server that
    refuses the credentials shows up as a traceback at the first call that needs them. The check
    asks what any user of the server may ask (one experiment of ``experiments/search``), the way
    MLflow's requests go: through the ``requests`` library, so ``HTTP(S)_PROXY`` and ``NO_PROXY``
    apply, with MLflow's credentials (:func:`_mlflow_login`) and TLS settings. Any HTTP answer
    means the server is there; 401 or 403 means it refused who is asking, unless an auth plugin
    signs MLflow's requests (``MLFLOW_TRACKING_AUTH``, AWS SigV4), which this check cannot copy.
    """
    if urllib.parse.urlparse(uri).scheme not in {"http", "https"}:
        return
    import requests

    login = _mlflow_login()
    try:
        with requests.get(f"{uri.rstrip('/')}{_PROBE}", headers=login.headers, timeout=timeout_s,
                          allow_redirects=False, **_tls_options()) as answer:
            status = answer.status_code
            host_refused = status == 403 and _HOST_REFUSED in answer.text[:200]
    except requests.RequestException as exc:
        reason = exc.__class__.__name__ if isinstance(exc, requests.Timeout) else _root_cause(exc)
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({TRACKING_ENV}): {reason}. "
            f"Start the server, or unset {TRACKING_ENV} to use the local store {default_tracking_uri()}"
        ) from None
    if host_refused:
        raise TrackingRefused(_host_refused(uri))
    if status in (401, 403) and not login.plugin:
        raise TrackingRefused(_refused(uri, status, login.who))


@dataclass(frozen=True)
class _Login:
    """What MLflow's client sends an HTTP tracking server to say who it is."""

    headers: dict[str, str]
    who: str | None  # for messages: "user 'alice'", never a password or token; None without credentials
    plugin: bool  # an auth plugin signs MLflow's requests instead (MLFLOW_TRACKING_AUTH, AWS SigV4)


def _mlflow_login() -> _Login:
    """The credentials MLflow's client sends, read as it reads them (``mlflow.utils.credentials``):
    ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` from the environment, each else
    from ``~/.mlflow/credentials``, as HTTP basic auth; without both, ``MLFLOW_TRACKING_TOKEN`` as
    a bearer token."""
    import base64
    import configparser

    stored = configparser.ConfigParser()
    stored.read(Path("~/.mlflow/credentials").expanduser())
    section = stored["mlflow"] if stored.has_section("mlflow") else {}
    username = os.environ.get(USERNAME_ENV) or section.get(USERNAME_ENV.lower())
    password = os.environ.get(PASSWORD_ENV) or section.get(PASSWORD_ENV.lower())
    plugin = bool(os.environ.get("MLFLOW_TRACKING_AUTH")) or _true("MLFLOW_TRACKING_AWS_SIGV4")
    if username and password:
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        return _Login({"Authorization": f"Basic {basic}"}, f"user {username!r}", plugin)
    if token := os.environ.get(TOKEN_ENV):
        return _Login({"Authorization": f"Bearer {token}"}, f"the token in {TOKEN_ENV}", plugin)
    return _Login({}, None, plugin)


def _true(name: str) -> bool:
    """Whether the environment variable ``name`` is set to true, as MLflow reads its boolean settings."""
    return os.environ.get(name, "").strip().lower() in {"true", "1"}


def _tls_options() -> dict[str, Any]:
    """MLflow's TLS settings for its requests: ``MLFLOW_TRACKING_INSECURE_TLS``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA bundle) and ``MLFLOW_TRACKING_CLIENT_CERT_PATH``."""
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or not _true("MLFLOW_TRACKING_INSECURE_TLS")
    return {"verify": verify, "cert": os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None}


def _refused(uri: str, status: int, who: str | None, endpoint: str | None = None) -> str:
    """One line for a 401 or 403 from the server at ``uri``: who was refused and what to change.

    Names the user, never the password or token; the URI is shown without credentials.
    """
    server = f"the MLflow tracking server at {redact(uri)} ({TRACKING_ENV})"
    if who is None and "@" in urllib.parse.urlsplit(uri).netloc:
        who = f"the user in {TRACKING_ENV}"
    on = f" on {endpoint}" if endpoint else ""
    if who is None:
        return (f"{server} requires credentials (HTTP {status}{on}) and none are set: "
                f"set {USERNAME_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV}) to an account of that server")
    if status == 401:
        check = TOKEN_ENV if who.startswith("the token") else f"{USERNAME_ENV} and {PASSWORD_ENV}"
        return f"credentials refused by {server}: HTTP 401 for {who}{on}; check {check}"
    return (f"permission denied by {server}: HTTP 403 for {who}{on}; its admin can grant it "
            "(EDIT or MANAGE on the experiment or registered model)")


def _host_refused(uri: str, endpoint: str | None = None) -> str:
    """One line for MLflow's 403 "Invalid Host header": the server's ``--allowed-hosts`` does not
    list the name and port the client addressed it by, whoever the user is."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"  # as requests sends Host: the port unless it is the scheme's own
    on = f" on {endpoint}" if endpoint else ""
    return (f"the MLflow tracking server at {redact(uri)} ({TRACKING_ENV}) refused the Host header {host!r} "
            f"(HTTP 403 \"Invalid Host header\"{on}): it is not in the server's --allowed-hosts; its admin "
            f"adds {host} there (names with their ports, comma-separated), or use an address it lists")


# MlflowException's error codes for a server's HTTP 401 and 403.
_REFUSAL_CODES = {"UNAUTHENTICATED": 401, "CUSTOMER_UNAUTHORIZED": 401, "PERMISSION_DENIED": 403}


def refusal(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` if it is an HTTP tracking server's 401 or 403, else ``None``.

    Recognises MLflow's ``MlflowException`` by its ``error_code`` (this module does not import
    mlflow), for a refusal that comes after :func:`check_reachable` passed: a user who may read
    but not write an experiment, say.
    """
    status = _REFUSAL_CODES.get(str(getattr(exc, "error_code", "")))
    uri = tracking_uri()
    if status is None or urllib.parse.urlparse(uri).scheme not in {"http", "https"}:
        return None
    message = str(getattr(exc, "message", exc))
    endpoint = re.search(r"endpoint (/\S+)", message)
    if status == 403 and _HOST_REFUSED in message:
        return _host_refused(uri, endpoint and endpoint.group(1))
    return _refused(uri, status, _mlflow_login().who, endpoint and endpoint.group(1))


def store_failure(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` if it is the database of the tracking store failing under
    MLflow (a SQLAlchemy error: a damaged ``mlflow.db``, a database that refuses connections), else
    ``None``.

    MLflow lets SQLAlchemy's error out as it opens the store, and wraps it later: either way it is
    in the exception's chain, raised through MLflow's code (not another database's, such as a
    sweep's Optuna storage). This module does not import either: both are known by their modules.
    """
    uri = tracking_uri()
    if urllib.parse.urlsplit(uri).scheme in {"http", "https", "file", ""}:  # a server's errors come as HTTP
        return None
    database = next((e for e in _chain(exc) if type(e).__module__ == "sqlalchemy.exc" and _through_mlflow(e)), None)
    if database is None:
        return None
    reason = database_reason(database)
    store = f"the MLflow tracking store {redact(uri)}"
    if uri.startswith("sqlite:") and type(database).__name__ != "OperationalError":  # the file is not sqlite's
        return (f"{store} is damaged ({reason}): restore it from a backup, or move it aside to start an "
                "empty store")
    return f"{store} failed: {reason}"


def database_reason(exc: BaseException) -> str:
    """A database error in one line: the first line of the driver's own message (SQLAlchemy keeps
    it as ``orig``), redacted, since a driver that quotes the URL quotes its password."""
    return redact((str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0])


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, innermost last."""
    chain = [exc]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def _through_mlflow(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside MLflow's code (a frame of an ``mlflow`` module on its way out)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "mlflow":
            return True
        tb = tb.tb_next
    return False


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message, without the URL (it may hold credentials)."""
    exc = _chain(exc)[-1]
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": ", 1)[-1] if "://" in text else text


def _sqlite_setup_lock(uri: str) -> Any:
    """An inter-process lock around a sqlite store's first use.

    MLflow creates and migrates the sqlite schema on first use; stages started together
    (``dvc queue start -j N``) would otherwise race on it ("duplicate column name").
    """
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    return FileLock(str(database.with_name(database.name + ".lock")), timeout=300)


def git_commit() -> str | None:
    """HEAD's commit of the repository, or ``None`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_changes() -> list[str] | None:
    """The working tree's uncommitted changes, as ``git status --porcelain`` lines (untracked files
    included, ignored ones not); ``None`` outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines()


def run_tags(*, dataset: str, stage: str, variant: str | None = None,
             changes: list[str] | None = None) -> dict[str, str]:
    """The contract's tags: variant, dataset, stage, git commit and whether the tree was dirty, and
    dvc_exp under ``dvc exp run``. ``changes`` are :func:`git_changes`, when the caller has read
    them already (the train stage records them too: one reading serves both)."""
    tags = {"dataset": dataset, "stage": stage}
    if variant is not None:
        tags["variant"] = variant
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["git_dirty"] = str(bool(changes if changes is not None else git_changes())).lower()
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = exp
    return tags


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so the run is closed as KILLED like on Ctrl-C."""


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``) for ``log_params``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def process_alive(pid: Any) -> bool | None:
    """Whether the process that a record's pid (an MLflow tag, a study's trial attribute) names
    still runs on this host; None when the value names no process (missing, not a positive
    number), for the caller to decide what an unknown owner means."""
    try:
        number = int(pid)
    except (TypeError, ValueError):
        return None
    if number <= 0:  # os.kill would signal a process group
        return None
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
