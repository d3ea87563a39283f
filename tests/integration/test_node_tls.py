"""A node whose TLS certificate has expired, or names another host, is excluded with the
reason on /status, and its requests go to the others; renewed, it is back at a probe
after. Each node is a simulated Steem node behind a real TLS listener (a relay in a
thread) with a certificate signed by a CA of the test's own (openssl), trusted through
SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread

from ..conftest import free_port, require_tool

CALL = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "id": 3}


def make_ca(folder: Path) -> tuple[Path, Path]:
    """A certificate authority of our own: (cert, key)."""
    openssl = require_tool("openssl")
    cert, key = folder / "ca.pem", folder / "ca.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=rpcbalancer test CA", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def make_certificate(
    folder: Path, ca: tuple[Path, Path], name: str, host: str, days: int
) -> tuple[Path, Path]:
    """A certificate for ``host`` signed by ``ca``, valid for ``days`` from now; a negative
    number makes one that has expired."""
    openssl = require_tool("openssl")
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\n")
    subprocess.run(
        [openssl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
         "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", str(days), "-extfile", str(ext), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class TlsRelay:
    """A TLS listener on 127.0.0.1 that relays each connection to a plain node."""

    def __init__(self, cert: Path, key: Path, node_port: int) -> None:
        self.port = free_port()
        self.node_port = node_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
        )
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.node_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, node_writer), pipe(node_reader, writer))

    def __enter__(self) -> TlsRelay:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def nodes() -> Iterator[FleetThread]:
    with FleetThread(
        {name: Behaviour(latency=0.002) for name in ("plain", "good", "expired", "stranger")}
    ) as running:
        yield running


def test_an_expired_or_wrong_certificate_excludes_the_node_with_the_reason(
    nodes: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path)
    certs = {
        "good": make_certificate(tmp_path, ca, "good", "localhost", 2),
        "expired": make_certificate(tmp_path, ca, "expired", "localhost", -1),
        "stranger": make_certificate(tmp_path, ca, "stranger", "node.example", 2),
    }
    relays = {
        name: TlsRelay(cert, key, int(nodes[name].url.rsplit(":", 1)[1]))
        for name, (cert, key) in certs.items()
    }
    for relay in relays.values():
        relay.__enter__()
    try:
        lb = balancer_process(
            {
                "nodes": [
                    {"url": nodes["plain"].url, "name": "plain"},
                    *(
                        {"url": f"https://localhost:{relay.port}", "name": name}
                        for name, relay in relays.items()
                    ),
                ],
                "probe": {"interval": 1},
            },
            env={"SSL_CERT_FILE": str(ca[0])},  # our CA is the one trusted
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = requests.get(f"{lb.url}/status.json", timeout=5).json()
            by_name = {n["name"]: n for n in status["nodes"]}
            if all(by_name[n]["probe"] is not None for n in by_name):
                break
            time.sleep(0.2)
        assert by_name["plain"]["state"] == "usable"
        assert by_name["good"]["state"] == "usable"  # TLS itself is fine
        assert by_name["expired"]["state"] == "excluded"
        assert "certificate has expired" in by_name["expired"]["reason"]
        assert by_name["stranger"]["state"] == "excluded"
        assert "Hostname mismatch" in by_name["stranger"]["reason"]
        served = {
            requests.post(lb.url, json=CALL, timeout=5).headers["x-rpc-node"] for _ in range(30)
        }
        assert served <= {"plain", "good"} and all(
            requests.post(lb.url, json=CALL, timeout=5).status_code == 200 for _ in range(5)
        )
        # The expired certificate renewed: the node is back at a probe after it.
        relays["expired"].context.load_cert_chain(*certs["good"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = requests.get(f"{lb.url}/status.json", timeout=5).json()
            renewed = next(n for n in status["nodes"] if n["name"] == "expired")
            if renewed["state"] == "usable":
                break
            time.sleep(0.2)
        assert renewed["state"] == "usable", renewed["reason"]
    finally:
        for relay in relays.values():
            relay.__exit__()
