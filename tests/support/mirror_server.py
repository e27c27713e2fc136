"""A real HTTP server on 127.0.0.1 for the download tests (no mocks): :class:`LocalHTTPServer`.

It serves files the test writes under ``server.root`` and can be told, per path, to misbehave
the way real mirrors do: answer an HTTP error status (a given number of times, then serve the
file), promise more bytes than it sends and hang up, or answer something that is not HTTP.
Every request is logged, so a test can assert how many attempts a source got. It can also
require an HTTP basic-auth login, as a private mirror does.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class _Fault:
    kind: str  # "status" | "truncate" | "garbage"
    remaining: int | None  # None: every time
    status: int = 500
    missing: int = 0  # bytes promised in Content-Length but never sent ("truncate")


class LocalHTTPServer:
    """Handle on the running server: where files go, how paths misbehave, what was requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self._faults: dict[str, _Fault] = {}
        self.login: str | None = None  # the Authorization header every request must carry, once required
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http_server fixture", daemon=True)
        self._thread.start()

    # --- addresses and content ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """Full URL of ``path`` (relative to the served root, e.g. ``"a/x.gz"``)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def put(self, path: str, content: bytes) -> str:
        """Serve ``content`` at ``path``; returns its URL."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return self.url(path)

    def require_login(self, user: str, password: str) -> None:
        """Answer 401 (``WWW-Authenticate: Basic``) to any request without this basic-auth login."""
        self.login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    # --- misbehaviour, per path --------------------------------------------------------------

    def fail(self, path: str, status: int = 500, times: int | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests of ``path`` (all of them if None), then serve it."""
        self._faults["/" + path.lstrip("/")] = _Fault("status", times, status=status)

    def truncate(self, path: str, missing: int = 100, times: int | None = None) -> None:
        """Send a Content-Length ``missing`` bytes larger than the body, send the body, and close."""
        self._faults["/" + path.lstrip("/")] = _Fault("truncate", times, missing=missing)

    def garbage(self, path: str, times: int | None = None) -> None:
        """Answer with bytes that are not an HTTP response at all, then close."""
        self._faults["/" + path.lstrip("/")] = _Fault("garbage", times)

    # --- what happened -----------------------------------------------------------------------

    def count(self, path: str) -> int:
        """How many requests ``path`` received."""
        wanted = "/" + path.lstrip("/")
        with self._lock:
            return sum(1 for p in self.requests if p == wanted)

    def _log(self, path: str, authorization: str | None) -> None:
        with self._lock:
            self.requests.append(path)
            self.authorizations.append(authorization)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(path)
            if fault is None or fault.remaining == 0:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server_version = "bplab-test/1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner: LocalHTTPServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        owner._log(path, self.headers.get("Authorization"))
        if owner.login is not None and self.headers.get("Authorization") != owner.login:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True
            return
        fault = owner._take_fault(path)
        if fault is not None and fault.kind == "status":
            self.send_error(fault.status)
            return
        if fault is not None and fault.kind == "garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.close_connection = True
            return
        target = (owner.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(owner.root.resolve()) or not target.is_file():
            self.send_error(404)
            return
        body = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        missing = fault.missing if fault is not None and fault.kind == "truncate" else 0
        self.send_header("Content-Length", str(len(body) + missing))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
        pass
