"""What the warm stage runner and its clients share: the wire format, where sockets live, and which
runner serves which environment.

Standard library only, and nothing of bplab's: the client loads it on every stage start (it must
be fast), and the runner loads it by file path (the runner never imports the ``bplab`` package, so
that every stage it forks imports today's code from disk).

A message is a 4-byte big-endian length and that many bytes of JSON; the first message of a
``run`` carries the client's standard streams as file descriptors (``SCM_RIGHTS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import site
import socket
import stat
import struct
import sys
from pathlib import Path

_LENGTH = struct.Struct("!I")
# What the client passes on to its stage (and the only signals the relay sends it)
RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LARGEST = 16 * 2**20  # an environment is a few kB; anything near this is not one of ours
HERE = Path(__file__).resolve().parent
DAEMON = HERE / "daemon.py"

# Variables read while the runner imports torch, MLflow, matplotlib..., not later by the stage:
# a client whose values differ needs a runner of its own (the stage's environment is otherwise the
# client's, whatever the runner started with). PYTHONPATH is not one: the runner starts without it
# and each stage puts its client's in front of the import path (a clone's own src/, in tests).
IMPORT_TIME_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "GOTO", "TORCH", "PYTORCH",
                        "MPL", "LC_", "LANG")
PER_STAGE = {"PYTHONPATH"}


class RunnerUnavailable(Exception):
    """No runner can serve this stage (no private directory, a runner that does not start...)."""


class Channel:
    """A connected Unix socket that sends and receives whole messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send ``message``; ``fds`` travel with its first byte."""
        data = json.dumps(message).encode()
        packet = _LENGTH.pack(len(data)) + data
        sent = socket.send_fds(self.sock, [packet], list(fds)) if fds else 0
        self.sock.sendall(packet[sent:])

    def receive(self, max_fds: int = 0) -> tuple[dict | None, list[int]]:
        """The next message and the descriptors that came with it; ``(None, [])`` at end of stream."""
        fds: list[int] = []
        while not self.complete():
            if max_fds and not fds:
                chunk, new_fds, _, _ = socket.recv_fds(self.sock, 65536, max_fds)
                fds += new_fds
            else:
                chunk = self.sock.recv(65536)
            if not chunk:
                for fd in fds:
                    os.close(fd)
                if self._buffer:
                    raise ConnectionError("the other side closed the connection in the middle of a message")
                return None, []
            self._buffer += chunk
        (length,) = _LENGTH.unpack_from(self._buffer)
        data, self._buffer = self._buffer[4:4 + length], self._buffer[4 + length:]
        return json.loads(data), fds

    def complete(self) -> bool:
        """Whether a whole message is already buffered (``select`` would not say so)."""
        if len(self._buffer) < _LENGTH.size:
            return False
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > _LARGEST:
            raise ConnectionError(f"a message of {length} bytes is not one of the runner's")
        return len(self._buffer) >= _LENGTH.size + length

    def close(self) -> None:
        self.sock.close()


def private_directory() -> Path:
    """This user's directory for runner sockets and logs, created mode 0700; refused when another
    user owns it or others may enter it (anyone who can connect can run code as this user)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else Path("/tmp")
    directory = base / f"bplab-runner-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise RunnerUnavailable(f"cannot make {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RunnerUnavailable(f"{directory} must be a directory of this user's with mode 0700 "
                                f"(it is {stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
    return directory


def environment_id() -> str:
    """Which Python environment this is (its prefix): runners of one environment replace each other."""
    return hashlib.sha256(f"{sys.executable}\0{sys.prefix}".encode()).hexdigest()[:10]


def import_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The variables of ``environ`` that the runner's imports read (see :data:`IMPORT_TIME_PREFIXES`)."""
    return {name: value for name, value in environ.items()
            if name.startswith(IMPORT_TIME_PREFIXES) and name not in PER_STAGE}


def installation_key() -> str:
    """What a runner's imports come from: the interpreter and the installed packages (their
    ``*.dist-info`` names: an install or upgrade changes them)."""
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0".encode())
    for directory in site.getsitepackages():
        try:
            names = sorted(name for name in os.listdir(directory) if name.endswith((".dist-info", ".egg-info", ".pth")))
        except OSError:
            continue
        digest.update(("\0".join([directory, *names]) + "\0").encode())
    return digest.hexdigest()[:10]


def runner_name(environ: dict[str, str] | os._Environ) -> str:
    """The name of the runner that serves a client with ``environ``: this environment's id, its
    :func:`installation_key`, and a digest of the runner's own code (two checkouts of different
    versions may share an environment) and of the variables its imports read. A runner of an
    older installation is replaced; the others live side by side, each until it is idle."""
    digest = hashlib.sha256(json.dumps(sorted(import_environment(environ).items())).encode())
    for source in (DAEMON, HERE / "client.py", Path(__file__)):  # the two ends of the wire, and the wire
        digest.update(source.read_bytes())
    return f"{environment_id()}-{installation_key()}-{digest.hexdigest()[:8]}"


def socket_path(directory: Path, name: str) -> Path:
    """The socket of the runner called ``name``."""
    return directory / f"{name}.sock"


def connect(path: Path, timeout: float | None = None) -> Channel:
    """A channel to the runner listening at ``path`` (``OSError`` when none does)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return Channel(sock)


def ask(path: Path, request: dict, timeout: float = 10) -> dict:
    """One request and its answer (``status``, ``stop``)."""
    channel = connect(path, timeout)
    try:
        channel.sock.settimeout(timeout)
        channel.send(request)
        answer, _ = channel.receive()
    finally:
        channel.close()
    if answer is None:
        raise ConnectionError(f"the runner at {path} closed the connection without answering")
    return answer
