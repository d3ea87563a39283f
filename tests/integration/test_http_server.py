"""HTTP/1.1 conformance of the server side, against independent client implementations:
raw sockets driven by h11, curl, requests, httpx and aiohttp."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from typing import Any

import aiohttp
import h11
import httpx
import orjson
import pytest
import requests

from rpcbalancer.sim import FleetThread

from ..conftest import require_tool

BODY = orjson.dumps(
    {"jsonrpc": "2.0", "method": "condenser_api.get_version", "params": [], "id": 1}
)


@pytest.fixture
def lb(fleet: FleetThread, balancer_process: Any) -> Any:
    return balancer_process(
        {
            "nodes": [fleet["fast"].url, fleet["medium"].url],
            "limits": {
                "max_header_bytes": 4096,
                "max_body": 65536,
                "request_timeout": 1.0,
                "idle_timeout": 1.5,
            },
        }
    )


def connect(lb: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", lb.port), timeout=5)


def post_event(body: bytes = BODY, **extra: str) -> h11.Request:
    headers = [
        ("host", "lb"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *extra.items(),
    ]
    return h11.Request(method="POST", target="/", headers=headers)


def read_responses(sock: socket.socket, methods: list[str]) -> list[tuple[h11.Response, bytes]]:
    """Read one answer per request method, in order, each with a fresh h11 client
    state machine (h11 itself does not pipeline), carrying over the bytes left."""
    answers: list[tuple[h11.Response, bytes]] = []
    leftover = b""
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "lb")]))
        conn.send(h11.EndOfMessage())
        if leftover:  # h11 reads b"" as the end of the connection
            conn.receive_data(leftover)
        response: h11.Response | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                answers.append((response, body))
                leftover = conn.trailing_data[0]
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
    return answers


def test_keep_alive_serves_many_requests_on_one_connection(lb: Any) -> None:
    with connect(lb) as sock:
        for i in range(3):
            client = h11.Connection(h11.CLIENT)
            body = orjson.dumps({"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": i})
            sock.sendall(
                client.send(post_event(body))
                + client.send(h11.Data(data=body))
                + client.send(h11.EndOfMessage())
            )
            ((response, answer),) = read_responses(sock, ["POST"])
            assert response.status_code == 200
            assert orjson.loads(answer)["id"] == i


def test_pipelined_requests_are_answered_in_order(lb: Any) -> None:
    raw = b""
    for i in range(5):
        body = orjson.dumps({"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": i})
        raw += (
            b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    raw += b"GET /version HTTP/1.1\r\nHost: lb\r\n\r\n"
    with connect(lb) as sock:
        sock.sendall(raw)
        answers = read_responses(sock, ["POST"] * 5 + ["GET"])
    assert [orjson.loads(b)["id"] for _, b in answers[:5]] == [0, 1, 2, 3, 4]
    assert orjson.loads(answers[5][1])["name"] == "rpcbalancer"


def test_chunked_request_body(lb: Any) -> None:
    with connect(lb) as sock:
        head = (
            b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunks = (
            b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
        )
        sock.sendall(head + chunks)
        ((response, answer),) = read_responses(sock, ["POST"])
    assert response.status_code == 200 and "blockchain_version" in answer.decode()


def test_half_closed_client_still_gets_its_answer(lb: Any) -> None:
    with connect(lb) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"blockchain_version" in data


def test_pipelined_requests_then_half_close_get_every_answer(lb: Any) -> None:
    request = b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    with connect(lb) as sock:
        sock.sendall(request * 3)
        sock.shutdown(socket.SHUT_WR)  # EOF may arrive with the requests, before any answer
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.count(b"blockchain_version") == 3
    assert data.lower().count(b"connection: close") == 1  # on the last answer only
    assert data.lower().rindex(b"connection: close") > data.rindex(b"HTTP/1.1 200 ")


def test_connection_close_and_http_1_0(lb: Any) -> None:
    for request in (
        b"GET /version HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n",
        b"GET /version HTTP/1.0\r\n\r\n",
    ):
        with connect(lb) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):  # the server closes: recv returns b""
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" in data.lower()


def test_head_has_headers_and_no_body(lb: Any) -> None:
    with connect(lb) as sock:
        sock.sendall(
            b"HEAD /version HTTP/1.1\r\nHost: lb\r\n\r\nGET /version HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        (head, body), (_, full) = read_responses(sock, ["HEAD", "GET"])
    assert head.status_code == 200 and body == b""
    assert int(dict(head.headers)[b"content-length"]) == len(full)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET http://elsewhere.example/ HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: lb\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: lb\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}", 417),
    ],
)
def test_bad_requests_get_a_clear_error_and_a_close(lb: Any, raw: bytes, status: int) -> None:
    with connect(lb) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 %d " % status)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert orjson.loads(body)["error"]["message"]


def test_expect_100_continue(lb: Any) -> None:
    with connect(lb) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: lb\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        ((response, _),) = read_responses(sock, ["POST"])
    assert response.status_code == 200


def test_slow_client_gets_408_and_idle_connections_are_closed(lb: Any) -> None:
    with connect(lb) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: lb\r\nContent-Length: 50\r\n\r\n{")
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 4
    with connect(lb) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # idle: closed by the server without a word
        assert 1.0 < time.monotonic() - started < 5


def test_curl(lb: Any) -> None:
    curl = require_tool("curl")
    out = subprocess.run(
        [curl, "-s", "-i", "--data-binary", "@-", "-H", "Content-Type: application/json", lb.url],
        input=BODY,
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/1.1 200")
    big = orjson.dumps(
        {"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": 1, "params": ["x" * 4000]}
    )
    out = subprocess.run(
        [curl, "-s", "-v", "-H", "Expect: 100-continue", "--data-binary", "@-", lb.url],
        input=big,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert b"100 Continue" in out.stderr and b"blockchain_version" in out.stdout


def test_requests_httpx_and_aiohttp(lb: Any) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert session.post(lb.url, data=BODY, timeout=5).json()["id"] == 1
    with httpx.Client() as client:
        for _ in range(3):
            assert client.post(lb.url, content=BODY).json()["id"] == 1
        assert client.get(lb.url + "/health").status_code == 200

    async def with_aiohttp() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = {"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": i}
                async with session.post(lb.url, json=body) as resp:
                    return int((await resp.json())["id"])

            return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(with_aiohttp()) == list(range(20))


def test_many_idle_connections_do_not_block_others(lb: Any) -> None:
    idle = [connect(lb) for _ in range(200)]
    try:
        assert requests.post(lb.url, data=BODY, timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    assert json.loads(requests.get(lb.url + "/version", timeout=5).text)["name"] == "rpcbalancer"
