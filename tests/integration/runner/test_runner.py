"""The warm stage runner with real processes: what a stage gets from its client, how it ends, how
signals and kills travel, and the runner's own life (start, status, stop, idle exit, replacement).

Each test's runners live in a private directory of their own (``XDG_RUNTIME_DIR``), apart from the
runner the rest of the suite shares. The probe is a stage entry point in miniature.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bplab.runner import protocol
from bplab.testing.scratch import stage_env

PROBE = '''\
import json, os, signal, sys, time
from pathlib import Path

from bplab.runner.client import run_stage, stage_pid


def main():
    import helper

    action = sys.argv[1]
    umask = os.umask(0)
    os.umask(umask)
    print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv, "probe": os.environ.get("PROBE"),
                      "umask": umask, "tty": sys.stderr.isatty(), "helper": helper.VALUE,
                      "stage_pid": stage_pid()}), flush=True)
    if action == "exit":
        sys.exit(int(sys.argv[2]))
    if action == "raise":
        raise RuntimeError("the probe failed on purpose")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "bar":
        from tqdm import tqdm

        for _ in tqdm(range(3), desc="probe"):
            time.sleep(0.01)
    if action == "wait":
        Path(sys.argv[2]).write_text(str(os.getpid()))
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)


if __name__ == "__main__":
    run_stage(main)
'''


def short_directory() -> Path:
    # A Unix socket's path has at most 107 bytes: pytest's tmp_path is too deep for one
    return Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))


@pytest.fixture(scope="module")
def runtime() -> Iterator[Path]:
    """A private runtime directory for this module's runner, stopped at the end."""
    directory = short_directory()
    yield directory
    stop_runners(directory)


def stop_runners(directory: Path) -> None:
    for path in directory.glob("bplab-runner-*/*.sock"):
        try:
            protocol.ask(path, {"op": "stop"})
        except (OSError, ConnectionError):
            pass


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    return tmp_path


def env_for(runtime: Path, mode: str = "on", **extra: str) -> dict[str, str]:
    return stage_env(XDG_RUNTIME_DIR=str(runtime), BPLAB_RUNNER=mode, PROBE="from the client", **extra)


def run_probe(probe: Path, runtime: Path, *args: str, mode: str = "on", **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "probe.py", *args], cwd=probe, env=env_for(runtime, mode),
                          capture_output=True, text=True, timeout=300, **options)


def report(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.splitlines()[0])


def status(runtime: Path) -> list[dict]:
    return [protocol.ask(path, {"op": "status"}) for path in sorted(runtime.glob("bplab-runner-*/*.sock"))]


def start_probe(probe: Path, runtime: Path, mode: str) -> tuple[subprocess.Popen, int]:
    """A probe waiting in its stage (its pid file written); the client and the stage's pid."""
    ready = probe / "ready"
    client = subprocess.Popen([sys.executable, "probe.py", "wait", str(ready)], cwd=probe, env=env_for(runtime, mode),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ready.exists() or not ready.read_text():
        assert client.poll() is None, client.communicate()
        assert time.monotonic() < deadline, "the probe did not start"
        time.sleep(0.05)
    return client, int(ready.read_text())


def gone(pid: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_stage_runs_forked_with_its_clients_argv_directory_environment_umask_and_exit_status(
        probe: Path, runtime: Path) -> None:
    client = subprocess.Popen([sys.executable, "probe.py", "exit", "3"], cwd=probe, env=env_for(runtime),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.umask(0o027))
    stdout, stderr = client.communicate(timeout=300)
    assert client.returncode == 3, stderr
    seen = json.loads(stdout)
    assert seen["pid"] != client.pid  # forked by the runner, not run in the client
    assert seen["stage_pid"] == client.pid  # which stands for the stage: its clock starts with the client
    assert seen["cwd"] == str(probe) and seen["argv"] == ["probe.py", "exit", "3"]
    assert (seen["probe"], seen["umask"]) == ("from the client", 0o027)
    [runner] = status(runtime)
    assert runner["served"] >= 1 and runner["bplab_imported"] is False


def test_bplab_runner_off_runs_the_stage_in_the_clients_own_process(probe: Path, runtime: Path) -> None:
    client = subprocess.Popen([sys.executable, "probe.py", "exit", "0"], cwd=probe, env=env_for(runtime, "off"),
                              stdout=subprocess.PIPE, text=True)
    stdout, _ = client.communicate(timeout=120)
    seen = json.loads(stdout)
    assert seen["pid"] == seen["stage_pid"] == client.pid


@pytest.mark.parametrize("mode", ["on", "off"])
def test_an_uncaught_error_prints_its_traceback_and_exits_1_in_both_modes(probe: Path, runtime: Path,
                                                                         mode: str) -> None:
    result = run_probe(probe, runtime, "raise", mode=mode)
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("RuntimeError: the probe failed on purpose")


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_stage_that_kills_itself_ends_its_client_by_the_same_signal(probe: Path, runtime: Path, mode: str) -> None:
    assert run_probe(probe, runtime, "kill", mode=mode).returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGINT, 130, "interrupted\n"),
                                                      (signal.SIGTERM, -signal.SIGTERM, "")])
def test_a_signal_to_the_client_reaches_the_stage(probe: Path, runtime: Path, mode: str, signum: int, code: int,
                                                  said: str) -> None:
    client, stage = start_probe(probe, runtime, mode)
    assert (stage != client.pid) == (mode == "on")
    client.send_signal(signum)
    stdout, stderr = client.communicate(timeout=60)
    assert client.returncode == code, stderr
    assert stdout.endswith("}\n" + said)
    assert gone(stage)


def test_killing_the_client_with_sigkill_kills_its_stage(probe: Path, runtime: Path) -> None:
    client, stage = start_probe(probe, runtime, "on")
    assert stage != client.pid
    client.kill()
    client.communicate(timeout=60)
    assert gone(stage), f"stage {stage} outlived its killed client"


def test_a_progress_bar_draws_on_the_clients_terminal(probe: Path, runtime: Path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # tqdm draws nothing in 0 columns
    client = subprocess.Popen([sys.executable, "probe.py", "bar"], cwd=probe, env=env_for(runtime),
                              stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert client.wait(timeout=60) == 0
    text = output.decode()
    assert '"tty": true' in text and "probe: 100%|" in text and "3/3" in text


def test_an_edited_module_is_picked_up_by_the_next_stage(probe: Path, runtime: Path) -> None:
    assert report(run_probe(probe, runtime, "exit", "0"))["helper"] == 1
    (probe / "helper.py").write_text("VALUE = 2\n")
    assert report(run_probe(probe, runtime, "exit", "0"))["helper"] == 2


def test_status_and_stop(probe: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from bplab.commands.main import main

    run_probe(probe, runtime, "exit", "0")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    [socket_path] = runtime.glob("bplab-runner-*/*.sock")
    assert socket_path.stat().st_mode & 0o777 == 0o600 and socket_path.parent.stat().st_mode & 0o777 == 0o700
    [running] = status(runtime)
    assert main(["runner", "status"]) == 0
    shown = capsys.readouterr().out
    assert f"runner {running['pid']} (" in shown and "modules preloaded" in shown and str(socket_path) in shown
    assert main(["runner", "stop"]) == 0
    assert capsys.readouterr().out == f"runner {running['pid']} stopped (stages it was running go on to their end)\n"
    assert gone(running["pid"]) and not socket_path.exists()
    assert main(["runner", "status"]) == 0
    assert capsys.readouterr().out == "no runner is running for this environment\n"


def test_concurrent_first_stages_start_one_runner_which_exits_when_idle(probe: Path) -> None:
    runtime = short_directory()
    clients = [subprocess.Popen([sys.executable, "probe.py", "exit", "0"], cwd=probe,
                                env=env_for(runtime, BPLAB_RUNNER_IDLE="4"), stdout=subprocess.PIPE, text=True)
               for _ in range(3)]
    pids = {json.loads(client.communicate(timeout=300)[0])["pid"] for client in clients}
    assert len(pids) == 3 and [client.returncode for client in clients] == [0, 0, 0]
    [runner] = status(runtime)
    assert runner["served"] == 3
    assert gone(runner["pid"], within=30), "the idle runner did not exit"
    assert list(runtime.glob("bplab-runner-*/*.sock")) == []


def test_a_runner_of_an_older_installation_is_replaced(probe: Path) -> None:
    runtime = short_directory()
    directory = runtime / f"bplab-runner-{os.getuid()}"
    directory.mkdir(mode=0o700)
    environment, installation, variables = protocol.runner_name(env_for(runtime)).split("-")
    older = directory / f"{environment}-{'0' * len(installation)}-{variables}.sock"
    runner = subprocess.Popen([sys.executable, str(protocol.DAEMON), "--socket", str(older), "--name", older.stem],
                              env=env_for(runtime), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not older.exists():
            assert runner.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert run_probe(probe, runtime, "exit", "0").returncode == 0
        assert runner.wait(timeout=30) == 0  # told to stop by the client that started the new one
        [current] = status(runtime)
        assert Path(current["socket"]).name != older.name
    finally:
        runner.kill()
        stop_runners(runtime)


def test_a_directory_others_may_enter_is_refused_and_the_stage_runs_in_its_own_process(probe: Path) -> None:
    runtime = short_directory()
    (runtime / f"bplab-runner-{os.getuid()}").mkdir(mode=0o755)
    (runtime / f"bplab-runner-{os.getuid()}").chmod(0o755)
    result = run_probe(probe, runtime, "exit", "0")
    assert result.returncode == 0
    assert "the warm stage runner is unavailable" in result.stderr
    assert "must be a directory of this user's" in result.stderr
    assert list(runtime.rglob("*.sock")) == []
