"""bplab's warm stage runner: a process that has imported torch, MLflow and the rest once, and forks
a child per stage, so that a stage starts in milliseconds instead of seconds.

Run as a script (``python .../daemon.py --socket PATH``), started by the first stage that wants
it (:mod:`bplab.runner.client`), never imported as ``bplab.runner.daemon``: it must not import
bplab's code, so that each forked stage imports the code as it is on disk now. Nor does it run a
single torch operation, so no thread pool of torch's exists to be copied half-alive into a child.

For each ``run`` request a *supervisor* is forked, which forks the *stage* and then relays:
signals from the client to the stage, the stage's exit status back to the client, and when the
client's connection drops (DVC killed, ``kill -9``), SIGKILL to the stage's process group. The
stage itself takes the client's argv, working directory, environment, umask and standard streams.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import io
import os
import select
import signal
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == HERE:
    del sys.path[0]  # this script's folder holds bplab's modules, not the runner's imports

# What the stages import from outside bplab (measured with `python -X importtime` on each stage),
# by the modules that pull the rest in. A name missing from this environment is skipped.
PRELOAD = (
    "numpy", "yaml", "pydantic", "filelock", "tqdm.auto", "git", "tabulate",
    "torch", "torch.nn", "torch.optim", "torch.utils.data", "torch.distributed", "torch.nn.parallel",
    "torch._dynamo", "torch.export", "torch.export._trace", "torch._functorch.aot_autograd", "torch._inductor.ir",
    "sympy.tensor.tensor", "sympy.combinatorics", "networkx", "importlib_metadata", "email.policy",
    "xml.etree.ElementTree", "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.GifImagePlugin",
    "PIL.BmpImagePlugin", "PIL.PpmImagePlugin",
    "pandas", "sklearn.preprocessing", "sklearn.model_selection",
    "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg",
    "mlflow", "mlflow.pytorch", "mlflow.pyfunc", "mlflow.models", "mlflow.tracking", "mlflow.entities",
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.tracing.processor.base_mlflow", "mlflow.tracing.processor.otel",
    "mlflow.system_metrics.system_metrics_monitor",
    "mlflow.store.tracking.sqlalchemy_workspace_store", "mlflow.pyfunc.scoring_server", "mlflow.models.display_utils",
    "mlflow.store.model_registry.sqlalchemy_workspace_store", "torch.utils.serialization", "torch._inductor.sizevars",
    "torch.fx.experimental.validator",
    "sqlalchemy.dialects.sqlite", "alembic.config",
)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _load_protocol():
    spec = importlib.util.spec_from_file_location("_bplab_runner_protocol", os.path.join(HERE, "protocol.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runner {os.getpid()}: {message}", flush=True)


def preload() -> tuple[int, float]:
    """Import :data:`PRELOAD`; the number of modules loaded and the seconds it took."""
    started = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional part missing here: the stage imports it itself, if it needs it
            log(f"not preloaded: {name} ({type(exc).__name__}: {exc})")
    # Frozen: neither this process's collections nor any child's walk these millions of objects,
    # and a child's pages stay shared with the runner's instead of being touched by the collector.
    gc.collect()
    gc.freeze()
    return len(sys.modules), time.perf_counter() - started


class Job:
    """A stage to run in this (forked) process, as the client asked."""

    def __init__(self, request: dict, fds: list[int], supervisor: int) -> None:
        self.request = request
        self.fds = fds
        self.supervisor = supervisor

    def enter(self) -> None:
        """Become the client's stage: its streams, directory, environment, umask and argv."""
        # A session of its own: the supervisor ends the stage's whole process group if the client
        # dies, and under the kernel's autogroup scheduling (one CPU share per session) the stage
        # does not share one with the runner and every other stage it forked (measured: on a
        # busy 2-core machine a forked training ran at half the speed of its own process).
        os.setsid()
        _name_process(b"bplab-stage")
        _die_with_parent()
        if os.getppid() != self.supervisor:  # the supervisor died before the line above
            os._exit(1)
        request = self.request
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for target, fd in enumerate(self.fds):
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _standard_streams(request["env"])
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in request["ignored_signals"]:
            signal.signal(signum, signal.SIG_IGN)
        import tempfile

        tempfile.tempdir = None  # chosen again from this environment's TMPDIR
        if "numpy" in sys.modules:
            # As unpredictable as in a fresh process (Python's own random reseeds itself in a fork)
            sys.modules["numpy"].random.seed()
        script = request["script"]
        sys.argv = list(request["argv"])
        # As Python builds it for `python <script>`: the script's folder, PYTHONPATH, then the rest
        client_path = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
        sys.path[:0] = [os.path.dirname(script), *map(os.path.abspath, client_path)]
        importlib.import_module("bplab.runner.client").mark_runner_child(request["client_pid"])

    def run(self) -> None:
        """Run the stage's script as ``__main__``, and end this process as ``python <script>`` would
        end: the same exit status, tracebacks, threads joined and ``atexit`` functions run.

        Then ``os._exit``, as multiprocessing's forked children end: the interpreter's own
        finalization would free, one by one, the millions of objects the runner imported, about
        0.55 s per stage here, for memory the kernel takes back at once."""
        self.enter()
        interrupted = False
        try:
            _run_as_main(self.request["script"])
            code = 0
        except SystemExit as exc:
            code = _exit_status(exc.code)
        except BaseException as exc:  # noqa: BLE001 - as the interpreter does with what nobody caught
            sys.excepthook(type(exc), exc, exc.__traceback__)
            code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
        _finish(code, interrupted)


def _run_as_main(script: str) -> None:
    # As `python <script>` runs it (runpy.run_path would make sys.argv[0] absolute)
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__, main.__cached__ = script, builtins, None
    sys.modules["__main__"] = main
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec")
    exec(code, main.__dict__)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int, interrupted: bool) -> None:
    import atexit
    import threading

    threading._shutdown()  # noqa: SLF001 - the interpreter's own wait for non-daemon threads
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # like Python, die of the SIGINT nobody handled (the shell then knows)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _name_process(name: bytes) -> None:
    # What `top` and `ps -o comm` show: a forked process keeps the runner's command line, and
    # "bplab-runner", "bplab-relay" (a stage's supervisor) and "bplab-stage" tell them apart
    import ctypes

    _prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]))


def _prctl(option: int, argument: object) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, argument, 0, 0, 0)


def _standard_streams(env: dict[str, str]) -> None:
    # As Python makes them at start-up for these descriptors (the runner's own were made for a log
    # file: block-buffered where a terminal needs lines).
    encoding, _, errors = env.get("PYTHONIOENCODING", "").partition(":")
    encoding = encoding or sys.stdout.encoding
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))

    def stream(fd: int, writing: bool, stream_errors: str) -> io.TextIOWrapper:
        raw = open(fd, "wb" if writing else "rb", buffering=0 if unbuffered and writing else -1, closefd=False)
        interactive = os.isatty(fd)
        return io.TextIOWrapper(raw, encoding=encoding, errors=errors or stream_errors,
                                line_buffering=writing and (interactive or fd == 2 or unbuffered),
                                write_through=writing and unbuffered)

    sys.stdin = sys.__stdin__ = stream(0, False, "strict")
    sys.stdout = sys.__stdout__ = stream(1, True, "strict")
    sys.stderr = sys.__stderr__ = stream(2, True, "backslashreplace")


class Runner:
    """The accept loop: ``run`` forks a supervisor, ``status`` and ``stop`` answer at once."""

    def __init__(self, path: str, idle: float, name: str, modules: int, preload_seconds: float) -> None:
        self.path = path
        self.idle = idle
        self.name = name
        self.modules = modules
        self.preload_seconds = preload_seconds
        self.started = time.time()
        self.last_active = time.monotonic()
        self.served = 0
        self.supervisors: set[int] = set()
        self.pid = os.getpid()
        old_mask = os.umask(0o177)  # the socket is born 0600: no instant where others may connect
        try:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
        finally:
            os.umask(old_mask)
        self.inode = os.stat(path).st_ino
        self.listener.listen(64)
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select through the pipe
        signal.signal(signal.SIGTERM, lambda *_: self._stop_requested())
        self.stopping = False

    def _stop_requested(self) -> None:
        self.stopping = True

    def serve(self) -> Job | None:
        """Serve until idle or stopped (None), or, in a forked stage, the :class:`Job` to run."""
        while not self.stopping:
            self._reap()
            timeout = None if self.supervisors else max(0.0, self.idle - (time.monotonic() - self.last_active))
            if timeout == 0.0:
                log(f"idle for {self.idle:.0f} s: exiting")
                break
            readable, _, _ = select.select([self.listener, self.wake_read], [], [], timeout)
            if self.wake_read in readable:
                try:
                    while os.read(self.wake_read, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.listener in readable:
                job = self._accept()
                if job is not None:
                    return job
            if not self._socket_is_ours():
                log(f"{self.path} is no longer this runner's socket: exiting")
                return None
        self._remove_socket()
        return None

    def _reap(self) -> None:
        for pid in list(self.supervisors):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.supervisors.discard(pid)
                self.last_active = time.monotonic()

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _remove_socket(self) -> None:
        if self._socket_is_ours():
            os.unlink(self.path)

    def _accept(self) -> Job | None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return None
        channel = protocol.Channel(connection)
        try:
            _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.getuid():
                log(f"refused a connection from uid {uid}")
                channel.close()
                return None
            connection.settimeout(10)
            request, fds = channel.receive(max_fds=3)
            connection.settimeout(None)
        except (OSError, ValueError, ConnectionError) as exc:
            log(f"dropped a connection: {exc}")
            channel.close()
            return None
        if request is None:
            channel.close()
            return None
        operation = request.get("op")
        if operation == "run" and len(fds) == 3:
            return self._fork_supervisor(channel, request, fds)
        for fd in fds:
            os.close(fd)
        try:
            if operation == "status":
                channel.send(self.status())
            elif operation == "stop":
                channel.send({"stopping": True, "pid": self.pid})
                log(f"stop asked ({request.get('why', 'bplab runner stop')})")
                self.stopping = True
            else:
                channel.send({"error": f"unknown request {operation!r}"})
        except OSError:
            pass
        channel.close()
        return None

    def status(self) -> dict:
        """What ``bplab runner status`` shows."""
        rss = 0
        with open("/proc/self/status") as lines:
            for line in lines:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return {"pid": self.pid, "name": self.name, "socket": self.path, "python": sys.executable,
                "started": self.started, "served": self.served, "running": len(self.supervisors),
                "idle_seconds": 0 if self.supervisors else round(time.monotonic() - self.last_active, 1),
                "idle_limit": self.idle, "modules": self.modules, "preload_seconds": round(self.preload_seconds, 2),
                "rss_kib": rss, "cpu_seconds": round(sum(os.times()[:2]), 2),
                "bplab_imported": any(name == "bplab" or name.startswith("bplab.") for name in sys.modules)}

    def _fork_supervisor(self, channel, request: dict, fds: list[int]) -> Job | None:
        self.served += 1
        self.last_active = time.monotonic()
        pid = os.fork()
        if pid:
            self.supervisors.add(pid)
            for fd in fds:
                os.close(fd)
            channel.close()
            return None
        # The supervisor
        self.listener.close()
        signal.set_wakeup_fd(-1)
        os.close(self.wake_read)
        os.close(self.wake_write)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        supervisor = os.getpid()
        _name_process(b"bplab-relay")
        stage = os.fork()
        if stage == 0:
            channel.close()
            return Job(request, fds, supervisor)
        try:
            _supervise(channel, stage, fds)
        finally:
            os._exit(0)


def _supervise(channel, stage: int, fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    stage_exit = os.pidfd_open(stage)
    try:
        channel.send({"pid": stage})
    except OSError:
        _end(stage)
        return
    while True:
        if not channel.complete():
            readable, _, _ = select.select([channel.sock, stage_exit], [], [])
            if stage_exit in readable:
                _, status = os.waitpid(stage, 0)
                try:
                    channel.send({"status": os.waitstatus_to_exitcode(status)})
                except OSError:
                    pass
                return
        try:
            message, _ = channel.receive()
        except (OSError, ConnectionError):
            message = None
        if message is None:  # the client died: so does its stage
            _end(stage)
            return
        signum = message.get("signal")
        if signum in protocol.RELAYED_SIGNALS:
            try:
                os.kill(stage, signum)
            except ProcessLookupError:
                pass


def _end(stage: int) -> None:
    try:
        os.killpg(stage, signal.SIGKILL)
    except OSError:
        try:
            os.kill(stage, signal.SIGKILL)
        except OSError:
            pass
    os.waitpid(stage, 0)


def main(argv: list[str]) -> Job | None:
    """Preload, listen at ``--socket``, serve; a forked stage returns the :class:`Job` to run."""
    parser = argparse.ArgumentParser(description="bplab's warm stage runner (started by the stages)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=float, default=900.0, help="exit after this many idle seconds")
    parser.add_argument("--name", required=True, help="the runner's name (bplab.runner.protocol.runner_name)")
    args = parser.parse_args(argv)
    _name_process(b"bplab-runner")
    modules, seconds = preload()
    runner = Runner(args.socket, args.idle, args.name, modules, seconds)
    read = sorted(protocol.import_environment(os.environ))
    log(f"listening at {args.socket} ({modules} modules preloaded in {seconds:.1f} s; "
        f"{len(os.listdir('/proc/self/task'))} threads; import-time variables: {', '.join(read) or 'none'})")
    job = runner.serve()
    if job is None:
        log(f"served {runner.served} stages; exiting")
    return job


if __name__ == "__main__":
    job = main(sys.argv[1:])
    if job is not None:
        job.run()
