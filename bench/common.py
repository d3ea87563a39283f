"""What the benchmark programs share: free ports and waiting for a listener."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rpcbalancer.sim import free_port

__all__ = ["DGP_BODY", "free_port", "serve_cmd", "stop_all", "wait_port"]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:g}s")


def stop_all(procs: Iterable[subprocess.Popen[Any] | None], grace: float = 10.0) -> None:
    """Stop the processes this program started (by PID): SIGTERM to all, newest first,
    then wait; a process still there after ``grace`` seconds is killed."""
    started = [p for p in procs if p is not None]
    for proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


DGP_BODY = (
    b'{"jsonrpc":"2.0","method":"condenser_api.get_dynamic_global_properties","params":[],"id":1}'
)
"""The request most clients of a Steem API node send most."""


def serve_cmd(config: Path, port: int, *extra: str) -> list[str]:
    """The command that runs ``rpcbalancer serve`` with this Python."""
    return [
        sys.executable,
        "-m",
        "rpcbalancer",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        *extra,
    ]


def checkout_env(src: Path | None) -> dict[str, str]:
    """The environment of an rpcbalancer target: this checkout's (the venv's), or, with
    ``src``, ``PYTHONPATH=<src>/src`` first, so that its package is the one imported (not this
    checkout's, whatever that holds: compiled modules beside the .py files included)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(src / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return env
