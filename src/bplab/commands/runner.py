"""``bplab runner status|stop``: show or end this user's warm stage runners (:mod:`bplab.runner`)."""

from __future__ import annotations

import argparse
import time

from bplab.runner import protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab runner``'s arguments."""
    parser.add_argument("action", choices=["status", "stop"], help="status: show the runners; stop: end them")
    parser.add_argument("--all", action="store_true",
                        help="every Python environment's runners of this user, not only this environment's")


def runner_sockets(every_environment: bool) -> list:
    """The sockets of this user's runners (of this environment unless ``every_environment``)."""
    pattern = "*.sock" if every_environment else f"{protocol.environment_id()}-*.sock"
    return sorted(protocol.private_directory().glob(pattern))


def _describe(answer: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(answer["started"]))
    state = f"running {answer['running']} stage(s)" if answer["running"] else \
        f"idle {answer['idle_seconds']:.0f} s of {answer['idle_limit']:.0f}"
    return (f"runner {answer['pid']} ({answer['python']}): {state}; served {answer['served']} stages since {started}; "
            f"{answer['modules']} modules preloaded in {answer['preload_seconds']} s; "
            f"memory {answer['rss_kib'] / 1024:.0f} MiB; CPU {answer['cpu_seconds']} s\n  socket {answer['socket']}")


def run(args: argparse.Namespace) -> int:
    """Print each runner's state, or stop each; a socket nobody answers on is removed."""
    try:
        sockets = runner_sockets(args.all)
    except protocol.RunnerUnavailable as exc:
        print(f"no runner: {exc}")
        return 0
    found = 0
    for path in sockets:
        try:
            answer = protocol.ask(path, {"op": args.action, "why": "bplab runner stop"})
        except (OSError, ConnectionError):
            path.unlink(missing_ok=True)  # its runner was killed: nothing listens there
            continue
        found += 1
        print(_describe(answer) if args.action == "status" else f"runner {answer['pid']} stopped "
              "(stages it was running go on to their end)")
    if not found:
        print("no runner is running" + ("" if args.all else " for this environment"))
    return 0
