"""The thin client every stage entry point starts with (:func:`run_stage`): it imports nothing heavy,
has the warm runner (:mod:`bplab.runner.daemon`) fork the stage, relays signals to it, and exits
as it did. The runner starts itself on first use; ``BPLAB_RUNNER=off`` runs stages in-process.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bplab.runner import protocol

DEFAULT_IDLE_SECONDS = 900
# A runner imports torch, MLflow...: seconds on a quiet machine, a minute or more on a loaded one.
START_TIMEOUT_SECONDS = 180
_client_pid: int | None = None  # set in a stage the runner forked: the process DVC started


def mark_runner_child(client_pid: int) -> None:
    """Called by the runner in the stage it forked for ``client_pid``: :func:`run_stage` then runs
    the stage here."""
    global _client_pid
    _client_pid = client_pid


def stage_pid() -> int:
    """The process that stands for this stage to the outside (DVC's child): the client that asked
    the runner for this process, or this process itself. A stage's clock starts with it."""
    return _client_pid or os.getpid()


def wanted(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether stages go through the runner: yes unless ``BPLAB_RUNNER`` says off, or under
    ``torchrun`` (whose agent watches and signals its workers' own processes), or where the
    runner's mechanisms (fork, descriptor passing, pidfds) are missing."""
    setting = environ.get("BPLAB_RUNNER", "on").strip().lower()
    if setting in {"off", "0", "no", "false"}:
        return False
    if setting not in {"on", "1", "yes", "true", ""}:
        raise SystemExit(f"BPLAB_RUNNER={setting!r}: expected on or off")
    return "TORCHELASTIC_RUN_ID" not in environ and sys.platform == "linux" and hasattr(os, "pidfd_open")


def idle_seconds(environ: dict[str, str] | os._Environ = os.environ) -> float:
    """How long a runner waits for work before it exits (``BPLAB_RUNNER_IDLE``, seconds)."""
    text = environ.get("BPLAB_RUNNER_IDLE", str(DEFAULT_IDLE_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise SystemExit(f"BPLAB_RUNNER_IDLE={text!r}: expected a positive number of seconds")
    return seconds


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` in a child of the warm runner, or in this process (``BPLAB_RUNNER=off``,
    under torchrun, or when no runner can start: then one line says why)."""
    if _client_pid is not None or not wanted():
        main()
        return
    script = os.path.abspath(sys.modules["__main__"].__file__)
    for _ in range(3):  # a runner stopped (or replaced) as it took the request did not start the stage
        try:
            channel = runner_channel()
        except protocol.RunnerUnavailable as exc:
            print(f"{Path(script).name}: the warm stage runner is unavailable ({exc}); running in this process",
                  file=sys.stderr)
            main()
            return
        status = _run_in(channel, script)
        if status is not None:
            _exit_as(status)
    raise SystemExit(f"{Path(script).name}: the warm stage runner closed three connections before starting "
                     "the stage; see `bplab runner status`, or run with BPLAB_RUNNER=off")


def runner_channel() -> protocol.Channel:
    """A connection to this environment's runner, started first if none is up."""
    directory = protocol.private_directory()
    name = protocol.runner_name(os.environ)
    path = protocol.socket_path(directory, name)
    try:
        return protocol.connect(path)
    except OSError:
        pass
    with open(directory / f"{path.stem}.lock", "a") as lock:  # one client starts it; the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return protocol.connect(path)
        except OSError:
            pass
        _retire_older(directory, name)
        return _start(path, name)


def _start(path: Path, name: str) -> protocol.Channel:
    path.unlink(missing_ok=True)  # a runner killed with -9 leaves its socket
    log_path = path.with_suffix(".log")
    environment = {**protocol.import_environment(os.environ),
                   **{name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}}
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        runner = subprocess.Popen(
            [sys.executable, str(protocol.DAEMON), "--socket", str(path), "--name", name,
             "--idle", str(idle_seconds())],
            env=environment, cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            return protocol.connect(path)
        except OSError:
            pass
        if runner.poll() is not None:
            raise protocol.RunnerUnavailable(
                f"it exited with status {runner.returncode} while starting; see {log_path}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    runner.kill()
    raise protocol.RunnerUnavailable(f"it did not start in {START_TIMEOUT_SECONDS} s; see {log_path}")


def _retire_older(directory: Path, name: str) -> None:
    # Runners of this environment as it was (packages installed since, the runner's code edited):
    # the new one replaces them. Stages they are running go on (their supervisors are separate processes).
    environment, installation, _ = name.split("-")
    for other in directory.glob(f"{environment}-*.sock"):
        if other.stem.split("-")[1] != installation:
            try:
                protocol.ask(other, {"op": "stop", "why": "replaced by a runner for the environment as it is now"}, 5)
            except (OSError, ConnectionError):
                other.unlink(missing_ok=True)


def _standard_descriptors() -> list[int]:
    # A stage started with a standard stream closed gets /dev/null there, as the runner needs three.
    descriptors = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            descriptors.append(fd)
        except OSError:
            descriptors.append(os.open(os.devnull, os.O_RDWR))
    return descriptors


def _run_in(channel: protocol.Channel, script: str) -> int | None:
    """Have the runner run ``script`` with this process's argv, directory, environment and streams;
    relay signals to it; its exit status (negative: the signal that ended it), or None when the
    runner closed the connection before it started the stage."""
    ignored = [int(signum) for signum in protocol.RELAYED_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN]
    umask = os.umask(0)
    os.umask(umask)
    pending: list[int] = []
    stage: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        if stage:
            try:
                channel.send({"signal": signum})
            except OSError:
                pass
        else:
            pending.append(signum)

    for signum in protocol.RELAYED_SIGNALS:
        if signum not in ignored:
            signal.signal(signum, relay)
    try:
        channel.send({"op": "run", "script": script, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
                      "client_pid": os.getpid(), "umask": umask, "ignored_signals": ignored},
                     _standard_descriptors())
    except OSError:
        return None
    while True:
        try:
            message, _ = channel.receive()
        except OSError:
            message = None
        if message is None and not stage:
            channel.close()
            return None
        if message is None:
            print(f"{Path(script).name}: the warm stage runner's process for this stage died; "
                  "the stage was ended with it", file=sys.stderr)
            return 1
        if "pid" in message:
            stage.append(message["pid"])
            for signum in pending:
                channel.send({"signal": signum})
        elif "status" in message:
            return message["status"]


def _exit_as(status: int) -> None:
    """End this process as the stage ended: the same exit code, or killed by the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if status < 0:
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    os._exit(status)
