"""Hostile clients against the real server: it keeps serving everyone else, with bounded
memory, whatever a few connections do (slowloris, oversized or malformed requests,
pipelined floods, abrupt resets, thousands of idle connections)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import FleetThread

DGP = json.dumps(
    {
        "jsonrpc": "2.0",
        "method": "condenser_api.get_dynamic_global_properties",
        "params": [],
        "id": 1,
    }
).encode()


def request(body: bytes = DGP, extra: bytes = b"") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def served(lb: Any, count: int = 5) -> bool:
    """Whether an ordinary client still gets answers, promptly."""
    for _ in range(count):
        answer = requests.post(
            lb.url, data=DGP, timeout=3, headers={"content-type": "application/json"}
        )
        if answer.status_code != 200:
            return False
    return True


@pytest.fixture
def lb(fleet: FleetThread, balancer_process: Any) -> Any:
    return balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "store": "none",
            "access_log": {"enabled": False},
            "limits": {
                "request_timeout": 1.5,
                "idle_timeout": 3,
                "max_header_bytes": 8192,
                "max_body": 65536,
            },
        }
    )


def test_slowloris_does_not_starve_others(lb: Any) -> None:
    slow = [socket.create_connection(("127.0.0.1", lb.port), timeout=5) for _ in range(100)]
    stop = threading.Event()

    def drip() -> None:
        partial = b"POST / HTTP/1.1\r\nHost: lb\r\nX-Slow: "
        for i in range(len(partial)):
            if stop.is_set():
                return
            for sock in slow:
                with contextlib.suppress(OSError):  # the server may have closed it already
                    sock.send(partial[i : i + 1])
            time.sleep(0.1)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        assert served(lb, 10)
        time.sleep(2.0)  # past request_timeout: every slow connection is answered and closed
        closed = 0
        for sock in slow:
            sock.settimeout(2)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            closed += data.startswith(b"HTTP/1.1 408") or data == b""
        assert closed == len(slow)
        assert served(lb)
    finally:
        stop.set()
        dripper.join(5)
        for sock in slow:
            sock.close()


def test_oversized_malformed_and_reset_requests(lb: Any) -> None:
    cases = {
        b"GET / HTTP/1.1\r\nHost: lb\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n": b"431",
        request(b"x" * 70000): b"413",
        b"POST / HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n": b"400",
        b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde": b"400",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40: b"400",
        b"GET / HTTP/9.9\r\nHost: lb\r\n\r\n": b"400",
        b"GET / HTTP/2.0\r\nHost: lb\r\n\r\n": b"505",
    }
    for raw, status in cases.items():
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
            sock.sendall(raw)
            try:
                reply = sock.recv(4096)
            except ConnectionResetError:
                reply = b""
        assert reply.startswith(b"HTTP/1.1 " + status), (raw[:40], reply[:80])
    for _ in range(200):  # abrupt resets: mid-headers, mid-body, right after the request
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request()[: 20 + _ % 120])
        sock.close()  # RST
    assert served(lb)


def test_pipelined_flood_answered_in_order(lb: Any) -> None:
    bodies = [DGP.replace(b'"id": 1', b'"id": %d' % i) for i in range(200)]
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as sock:
        sock.sendall(b"".join(request(body) for body in bodies))
        data = b""
        answers: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(answers) < 200 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            complete, data = _whole_responses(data)  # (the last one may still be coming)
            answers += complete
    ids = [json.loads(body)["id"] for body in answers]
    assert ids == list(range(200))


def _whole_responses(data: bytes) -> tuple[list[bytes], bytes]:
    """The bodies of the complete responses at the start of ``data``, and what is left."""
    bodies = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        if len(rest) < length:
            break
        assert head.startswith(b"HTTP/1.1 200"), head
        bodies.append(rest[:length])
        data = rest[length:]
    return bodies, data


@pytest.mark.slow
def test_two_thousand_idle_connections(lb: Any) -> None:
    assert lb.proc is not None
    before = rss_kb(lb.proc.pid)
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", lb.port), timeout=10))
        assert served(lb, 10)
        during = rss_kb(lb.proc.pid)
        assert during - before < 64 * 1024, (before, during)  # bounded: < ~32 KB each
        time.sleep(3.5)  # idle_timeout: the server lets them go
        dropped = 0
        for sock in idle[:100]:
            sock.settimeout(2)
            try:
                dropped += sock.recv(1) == b""
            except OSError:
                dropped += 1
        assert dropped == 100
        assert served(lb)
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_closed_connections_leave_nothing_behind(lb: Any) -> None:
    """Clients come and go by the million over a server's life: 10,000 connections opened,
    used once and closed must not grow its memory (a set once kept every one of them)."""
    assert lb.proc is not None
    assert served(lb)
    for _ in range(500):  # warm up: allocator pools, caches
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: lb\r\n\r\n")
            sock.recv(4096)
    before = rss_kb(lb.proc.pid)
    for _ in range(10_000):
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: lb\r\n\r\n")
            sock.recv(4096)
    time.sleep(0.5)
    grown = rss_kb(lb.proc.pid) - before
    assert grown < 4 * 1024, f"RSS grew {grown} KB over 10,000 closed connections"
