"""HTTP/1.1 conformance of the node client, against real servers on loopback: aiohttp,
nginx, and raw asyncio servers that misbehave in exactly one way each."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rpcbalancer.config import NodeConfig
from rpcbalancer.errors import (
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from rpcbalancer.fleet.address import NodeAddress
from rpcbalancer.upstream.pool import H1Transport, NodeRequest

from ..conftest import free_port, require_tool

HEADERS = {"content-type": "application/json"}
BODY = b'{"jsonrpc":"2.0","method":"condenser_api.get_version","params":[],"id":1}'

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def node_at(url: str, **kw: Any) -> NodeAddress:
    """Where the transport sends: a node's address (the transport sees nothing else of it)."""
    return NodeAddress.of(NodeConfig(url=url, **kw))


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """Start raw asyncio servers; every connection they accepted is closed at teardown."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler, **kw: Any) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0, **kw)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.01)  # let the transports finish closing before the loop goes


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def keep_alive_node() -> tuple[RawHandler, Callable[[], int]]:
    """A node that answers ``{}`` to every request on a connection for as long as the
    client keeps it, and the count of connections it accepted."""
    accepted = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handler, lambda: accepted


@pytest.fixture
async def transport() -> AsyncIterator[H1Transport]:
    client = H1Transport(connect_timeout=1.0)
    yield client
    await client.aclose()


async def test_chunked_answers_are_reassembled(transport: H1Transport) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"jsonrpc":"2.0",', b'"id":1,', b'"result":"chunked"}'):
            await resp.write(part)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        resp = await transport.send(
            node_at(f"http://127.0.0.1:{port}"), NodeRequest("POST", None, HEADERS, BODY), 5.0
        )
        assert resp.status == 200
        assert resp.body == b'{"jsonrpc":"2.0","id":1,"result":"chunked"}'
        assert resp.content_type == "application/json"
    finally:
        await runner.cleanup()


async def test_keep_alive_reuses_one_connection(transport: H1Transport, raw_server: Any) -> None:
    handler, connections = keep_alive_node()
    node = node_at(await raw_server(handler))
    for _ in range(5):
        assert (
            await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)
        ).body == b"{}"
    assert connections() == 1


async def test_connection_close_answers_are_not_reused(
    transport: H1Transport, raw_server: Any
) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    node = node_at(await raw_server(handler))
    for _ in range(3):
        assert (
            await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)
        ).body == b"{}"
    assert connections == 3


async def test_a_connection_the_node_closed_while_idle_is_retried_fresh(
    transport: H1Transport, raw_server: Any
) -> None:
    """The race every keep-alive client meets: the node drops an idle connection just as a
    request goes out on it. Reads are sent again on a fresh connection; nothing fails."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_request(reader)  # the second request on this connection: drop it
        writer.transport.abort()

    node = node_at(await raw_server(handler))
    assert (await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)).body == b"{}"
    assert (await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)).body == b"{}"
    assert served == 2


async def test_broadcasts_never_ride_a_reused_connection(
    transport: H1Transport, raw_server: Any
) -> None:
    handler, connections = keep_alive_node()
    node = node_at(await raw_server(handler))
    await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)
    await transport.send(node, NodeRequest("POST", None, HEADERS, BODY, idempotent=False), 5.0)
    await transport.send(node, NodeRequest("POST", None, HEADERS, BODY, idempotent=False), 5.0)
    assert connections() == 3


async def test_an_answer_delimited_by_close(transport: H1Transport, raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"old":')
        await writer.drain()
        writer.write(b'"school"}')
        writer.close()

    resp = await transport.send(
        node_at(await raw_server(handler)), NodeRequest("POST", None, HEADERS, BODY), 5.0
    )
    assert resp.body == b'{"old":"school"}'


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (b"garbage\r\n\r\n", UpstreamBadResponse, "malformed"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut', UpstreamError, "closed"),
        (b"", UpstreamError, "closed"),
    ],
)
async def test_broken_answers_are_clear_errors(
    transport: H1Transport, raw_server: Any, answer: bytes, error: type[Exception], text: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    node = node_at(await raw_server(handler))
    with pytest.raises(error) as info:
        await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)
    assert text in str(info.value) and node.name in str(info.value)


async def test_slow_drip_within_and_beyond_the_timeout(
    transport: H1Transport, raw_server: Any
) -> None:
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a":"dri"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.004)
        writer.close()

    node = node_at(await raw_server(handler))
    assert (
        await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0)
    ).body == b'{"a":"dri"}'
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.05s"):
        await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 0.05)


async def test_oversized_answers_are_refused(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        writer.close()

    client = H1Transport(max_body=1000)
    try:
        with pytest.raises(UpstreamBadResponse, match="larger than 1000 bytes"):
            await client.send(
                node_at(await raw_server(handler)), NodeRequest("POST", None, HEADERS, BODY), 5
            )
    finally:
        await client.aclose()


async def test_connect_failures_are_connect_errors(transport: H1Transport) -> None:
    with pytest.raises(UpstreamConnectError, match="connection refused") as info:
        await transport.send(
            node_at(f"http://127.0.0.1:{free_port()}"), NodeRequest("GET", None, {}, None), 2
        )
    assert info.value.sent is False
    with pytest.raises(UpstreamConnectError, match="cannot resolve"):
        await transport.send(
            node_at("http://nowhere.invalid"), NodeRequest("GET", None, {}, None), 2
        )


async def test_redirects_are_answers_not_followed(transport: H1Transport, raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    resp = await transport.send(
        node_at(await raw_server(handler)), NodeRequest("GET", None, {}, None), 5
    )
    assert resp.status == 302 and resp.headers == ()


async def test_request_framing_and_headers(transport: H1Transport, raw_server: Any) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    url = await raw_server(handler)
    node = node_at(url + "/rpc", headers={"X-Edge-Key": "k", "User-Agent": "node-ua"})
    headers = {"user-agent": "lb", "x-forwarded-for": "192.0.2.1", "content-length": "999"}
    await transport.send(node, NodeRequest("POST", None, headers, BODY), 5)
    request = seen[0]
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /rpc HTTP/1.1"
    lowered = [line.lower() for line in lines[1:]]
    assert lowered.count(b"user-agent: node-ua") == 1 and b"user-agent: lb" not in lowered
    assert b"x-edge-key: k" in lowered and b"x-forwarded-for: 192.0.2.1" in lowered
    assert f"content-length: {len(BODY)}".encode() in lowered and body == BODY
    assert any(line.startswith(b"host: 127.0.0.1:") for line in lowered)


@pytest.fixture
def nginx_node(tmp_path: Path) -> Iterator[int]:
    """nginx answering fixed JSON from memory, dropping idle keep-alive after 1 s."""
    nginx = require_tool("nginx")
    port = free_port()
    answer = '{"jsonrpc":"2.0","id":1,"result":"nginx"}'
    big = '"' + "x" * 3000 + '"'
    (tmp_path / "nginx.conf").write_text(f"""
pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; daemon off; worker_processes 1;
events {{ worker_connections 64; }}
http {{ access_log off; keepalive_timeout 1s;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{answer}'; }}
    location /big {{ default_type application/json; return 200 '{big}'; }}
  }}
}}
""")
    proc = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_nginx_as_a_node(transport: H1Transport, nginx_node: int) -> None:
    node = node_at(f"http://127.0.0.1:{nginx_node}")
    for _ in range(3):
        resp = await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5)
        assert resp.body == b'{"jsonrpc":"2.0","id":1,"result":"nginx"}'
    await asyncio.sleep(1.5)  # nginx drops the idle keep-alive connection meanwhile
    resp = await transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5)
    assert resp.status == 200
    big = await transport.send(node, NodeRequest("GET", "/big", {}, None), 5)
    assert len(big.body) == 3002


async def test_tls_nodes_with_sni_and_verification(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, raw_server: Any
) -> None:
    cert, key = certificate
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment,func-returns-value]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"tls"')
        await writer.drain()

    port = int((await raw_server(handler, ssl=context)).rsplit(":", 1)[1])
    strict = H1Transport()
    with pytest.raises(UpstreamConnectError, match=r"TLS certificate rejected: self.signed"):
        await strict.send(
            node_at(f"https://localhost:{port}"), NodeRequest("GET", None, {}, None), 5
        )
    await strict.aclose()

    relaxed = H1Transport()
    resp = await relaxed.send(
        node_at(f"https://localhost:{port}", verify_tls=False),
        NodeRequest("GET", None, {}, None),
        5,
    )
    assert resp.status == 200
    await relaxed.aclose()

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust our CA, verify for real
    trusting = H1Transport()
    pinned = NodeAddress.of(NodeConfig(url=f"https://localhost:{port}"), address="127.0.0.1")
    resp = await trusting.send(pinned, NodeRequest("GET", None, {}, None), 5)
    assert resp.status == 200
    assert server_names[-1] == "localhost"  # SNI keeps the name, the address is pinned
    await trusting.aclose()


async def test_prune_closes_only_connections_idle_too_long(raw_server: Any) -> None:
    handler, connections = keep_alive_node()
    node = node_at(await raw_server(handler))
    transport = H1Transport(idle_ttl=0.2)
    try:
        await asyncio.gather(
            *(transport.send(node, NodeRequest("POST", None, HEADERS, BODY), 5.0) for _ in range(3))
        )
        assert connections() == 3
        assert sum(len(q) for q in transport._idle.values()) == 3
        assert await transport.prune() == 0  # fresh: kept for reuse
        await asyncio.sleep(0.3)
        assert await transport.prune() == 3
        assert sum(len(q) for q in transport._idle.values()) == 0
    finally:
        await transport.aclose()
