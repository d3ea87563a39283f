"""Real services for the tests, started on free loopback ports and stopped by PID.

Redis and PostgreSQL run from their Debian packages. ``RPCBALANCER_TEST_REDIS_URL`` or
``RPCBALANCER_TEST_POSTGRES_URL`` point the tests at a running server instead. A missing
server skips its tests, unless RPCBALANCER_REQUIRE_SERVICES is set (CI): then it fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import pytest

from rpcbalancer.sim import free_port


def missing(what: str) -> NoReturn:
    """A test needs ``what`` and this machine lacks it: the test fails when the run insists
    on every service (RPCBALANCER_REQUIRE_SERVICES, which CI sets), else it is skipped with
    the reason. The one place that decides between the two."""
    if os.environ.get("RPCBALANCER_REQUIRE_SERVICES"):
        pytest.fail(f"{what} is required (RPCBALANCER_REQUIRE_SERVICES is set)")
    else:
        pytest.skip(f"{what} is not available (RPCBALANCER_REQUIRE_SERVICES unset)")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class ServerProcess:
    """A server started by the tests, stopped by its PID."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # runuser (PostgreSQL) passes the signal on
            self.proc.wait(20)
        self.proc = None


class RedisServer(ServerProcess):
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.binary = str(binary)
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self


class PostgresServer(ServerProcess):
    def __init__(self, folder: Path | None = None) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            missing("PostgreSQL (initdb)")
        self.bin = Path(str(initdb)).parent
        # Its own folder under /tmp: the postgres user cannot enter pytest's private ones.
        self.folder = folder or Path(tempfile.mkdtemp(prefix="rpcbalancer-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # PostgreSQL refuses to run as root: run it as the packaged "postgres" user.
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.prefix:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists():
            subprocess.run(
                [
                    *self.prefix,
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
            )
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class MotoServer(ServerProcess):
    """moto in server mode: the most faithful DynamoDB this machine can run (there is no
    DynamoDB Local without Java and a download; moto speaks the same HTTP API)."""

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            missing("moto[server]")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self


async def empty_postgres(url: str) -> None:
    """PostgreSQL tables are shared by the whole run: tests that use them start empty."""
    from rpcbalancer.health.store import open_store

    store = open_store(url)
    await store.open()
    try:
        await store._pool.execute("TRUNCATE rpcbalancer_latest, rpcbalancer_history")  # type: ignore[attr-defined]
    finally:
        await store.close()
