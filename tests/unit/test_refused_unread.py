"""A worker that will refuse the next request refuses one that came whole in one read
without parsing it (``H1Server.refuse_unread``): only when the bytes are exactly one whole
``POST`` that begins where the last request ended, and the connection goes on as if it had
been parsed. Everything else is parsed, and refused or rejected as before. A real server on
loopback; the guard is held full (one request in flight, ``max_inflight`` 1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from rpcbalancer.callbacks import Cancellable
from rpcbalancer.config import OverloadConfig, ServerLimits
from rpcbalancer.messages import JSON, HttpRequest, HttpResponse, Reply
from rpcbalancer.proxy.overload import Guard
from rpcbalancer.proxy.server import H1Server

BODY = b'{"jsonrpc":"2.0","method":"condenser_api.get_config","params":[],"id":1}'


def post(body: bytes = BODY, *headers: str) -> bytes:
    lines = ["POST / HTTP/1.1", "Host: rpc", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Served:
    guard: Guard
    server: asyncio.AbstractServer
    protocols: list[H1Server]
    handled: list[HttpRequest]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, H1Server]:
        port = self.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if self.protocols and self.protocols[-1].transport is not None:
                break
            await asyncio.sleep(0.01)
        return reader, writer, self.protocols[-1]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    loop = asyncio.get_running_loop()
    guard = Guard(OverloadConfig(max_inflight=1, max_queue_time=0), {})
    protocols: list[H1Server] = []
    handled: list[HttpRequest] = []

    def handler(request: HttpRequest, reply: Reply) -> Cancellable | None:
        handled.append(request)
        reply(HttpResponse(200, [JSON], b'{"jsonrpc":"2.0","result":"ok","id":1}'))
        return None

    def made() -> H1Server:
        protocols.append(H1Server(handler, ServerLimits(), loop, None, guard))
        return protocols[-1]

    server = await loop.create_server(made, "127.0.0.1", 0)
    try:
        yield Served(guard, server, protocols, handled)
    finally:
        server.close()
        for protocol in protocols:
            protocol.close()
        await server.wait_closed()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(lines[0].split()[1]), headers, body


async def test_a_whole_post_is_refused_unread_and_the_connection_goes_on(
    served: Served,
) -> None:
    reader, writer, protocol = await served.connect()
    served.guard.inflight = 1  # full: the next POST is refused
    for _ in range(3):
        assert protocol.refuse_unread(post(), served.guard)
        status, headers, body = await answer(reader)
        assert status == 503 and headers["retry-after"] == "1"
        assert "connection" not in headers  # kept alive
        refusal = orjson.loads(body)
        assert refusal["id"] is None and "Overloaded" in refusal["error"]["message"]
    # Sent as a client sends it, and with `Connection: keep-alive`: refused the same way.
    writer.write(post(BODY, "Connection: keep-alive"))
    assert (await answer(reader))[0] == 503
    assert served.guard.counts == {"refused_inflight": 4}
    assert served.handled == []
    served.guard.inflight = 0  # room again: the same connection is served
    writer.write(post())
    status, _, body = await answer(reader)
    assert status == 200 and orjson.loads(body)["result"] == "ok"
    assert len(served.handled) == 1 and served.handled[0].body == BODY
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (post()[:-1], "a part of a request"),
        (post() + post(), "two requests in one read"),
        (post(BODY, "Connection: close"), "the connection closes after it"),
        (post(BODY, "Transfer-Encoding: chunked"), "a chunked body"),
        (post(BODY, "Expect: 100-continue"), "an expectation"),
        (post(BODY, "Content-Length: 3"), "two lengths"),
        (post(BODY)[: -len(BODY)] + BODY + b"x", "a body longer than its length"),
        (post().replace(b"HTTP/1.1", b"HTTP/1.0"), "HTTP/1.0"),
        (post().replace(b"POST", b"GET", 1), "not a POST"),
    ],
)
async def test_anything_but_one_whole_post_is_left_to_the_parser(
    served: Served, data: bytes, why: str
) -> None:
    _, writer, protocol = await served.connect()
    served.guard.inflight = 1
    assert not protocol.refuse_unread(data, served.guard), why
    assert served.guard.counts == {}  # nothing decided, nothing counted
    writer.close()
    await writer.wait_closed()


async def test_what_the_parser_gets_is_refused_too_and_in_order(served: Served) -> None:
    reader, writer, _ = await served.connect()
    served.guard.inflight = 1
    # Two in one write: both refused, in order, the connection still open.
    writer.write(post() + post())
    assert [(await answer(reader))[0] for _ in range(2)] == [503, 503]
    # A request split across two writes: the parser's way, refused all the same; the whole
    # one after it starts where that one ended.
    request = post()
    writer.write(request[:40])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(request[40:])
    assert (await answer(reader))[0] == 503
    writer.write(post())
    assert (await answer(reader))[0] == 503
    assert served.guard.counts == {"refused_inflight": 4}
    # `Connection: close`: refused, then closed.
    writer.write(post(BODY, "Connection: close"))
    status, headers, _ = await answer(reader)
    assert status == 503 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_bytes_that_look_whole_but_continue_a_request_are_parsed(served: Served) -> None:
    """A request whose first bytes came in an earlier read: the next read may look like a
    whole request of its own, but it is the rest of this one, and the parser must see it
    (here the two make a request line that is not HTTP: 400, and the connection closes)."""
    reader, writer, protocol = await served.connect()
    served.guard.inflight = 1
    writer.write(b"POST ")
    await writer.drain()
    for _ in range(100):  # until the server has read them
        if protocol.request_started is not None:
            break
        await asyncio.sleep(0.01)
    writer.write(post())
    status, headers, body = await answer(reader)
    assert status == 400 and headers["connection"] == "close"
    assert b"Malformed HTTP request" in body
    assert served.guard.counts == {}
    writer.close()
    await writer.wait_closed()
