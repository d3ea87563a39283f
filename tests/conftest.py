"""Shared fixtures: free ports, the fake fleet, and real balancer processes.

Every process a fixture starts is stopped by its PID at teardown, whatever the test did.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from rpcbalancer.sim import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """The path of a program a test needs. Missing, it skips the test, unless the run
    insists on every service (CI sets RPCBALANCER_REQUIRE_SERVICES): then it fails."""
    import shutil

    from .services import missing

    path = shutil.which(name)
    if path is None:
        missing(f"the program {name}")
    return path


PEERS = Path(os.environ.get("RPCBALANCER_PEERS_DIR") or ROOT.parent / "shared" / "peers")
"""The peers' own sample config files, unchanged (see their README there)."""


def peer_file(name: str) -> Path:
    """A peer project's sample config file, read where it lies (never copied here). Missing,
    it skips the test, unless RPCBALANCER_REQUIRE_SERVICES is set: then it fails."""
    from .services import missing

    path = PEERS / name
    if not path.is_file():
        missing(str(path))
    return path


class BalancerProcess:
    """``rpcbalancer serve`` in a child process, on a free loopback port."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        tmp: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
        scheme: str = "http",
        port: int | None = None,
    ) -> None:
        """``port``: another server's, to listen beside it (an upgrade)."""
        self.port = port or free_port()
        self.scheme = scheme
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        name = f"balancer-{self.port}" if port is None else f"balancer-{self.port}-next"
        self.log_path = tmp / f"{name}.log"
        if config_path is None and config is not None:
            config_path = self.log_path.with_suffix(".yaml")
            config_path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "rpcbalancer", "serve", "--port", str(self.port)]
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        self.cmd = cmd + list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> BalancerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"balancer exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.scheme == "https":  # listening is enough: the test brings the CA
                    socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                else:
                    requests.get(self.url + "/version", timeout=0.5)
                return self
            except (requests.ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"balancer did not start within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)
        if hasattr(self, "_log"):
            self._log.close()

    def rpc(self, method: str, params: Any = None, ident: Any = 1, **kw: Any) -> requests.Response:
        body = {"jsonrpc": "2.0", "method": method, "params": params or [], "id": ident}
        return requests.post(self.url + "/", json=body, timeout=kw.pop("timeout", 15), **kw)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for localhost and 127.0.0.1: (cert, key)."""
    openssl = require_tool("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the whole run."""
    from .services import RedisServer

    if os.environ.get("RPCBALANCER_TEST_REDIS_URL"):
        yield os.environ["RPCBALANCER_TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the whole run."""
    from .services import PostgresServer

    if os.environ.get("RPCBALANCER_TEST_POSTGRES_URL"):
        yield os.environ["RPCBALANCER_TEST_POSTGRES_URL"]
        return
    server = PostgresServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    """A local DynamoDB (moto in server mode) for the whole run."""
    from .services import MotoServer

    # boto3 insists on credentials; these only ever reach the local emulator.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    server = MotoServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def balancer_process(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``balancer_process(config_dict)`` starts a server; all stop at teardown."""
    started: list[BalancerProcess] = []

    def start(config: dict[str, Any] | None = None, **kw: Any) -> BalancerProcess:
        proc = BalancerProcess(config, tmp_path, **kw)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
