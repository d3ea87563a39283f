"""The floor under rpcbalancer's data plane: two proxies on the same stack, for throughput.py.

    .venv/bin/python bench/floor.py bare --port P NODE_URL [NODE_URL ...]
    .venv/bin/python bench/floor.py layers --port P NODE_URL [NODE_URL ...]

``bare``: the least a proxy on uvloop and httptools can do: parse the client's request,
write it to a pooled keep-alive connection of the next node (round-robin), parse the
answer, write it back. No JSON, no checks, no headers of its own, nothing measured.

``layers``: rpcbalancer's own two HTTP layers, ``H1Server`` and ``H1Transport``, with a
handler that forwards every request to the next node and answers with the node's body:
every HTTP check and limit, pooling and deadlines, but no gateway and no router.

Between the two and the real balancer, throughput.py (``--floor``) shows what each layer
of the data plane costs per request. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

from rpcbalancer.callbacks import Cancellable
from rpcbalancer.config import from_mapping
from rpcbalancer.errors import UpstreamError
from rpcbalancer.fleet.nodes import Node
from rpcbalancer.messages import HttpRequest, HttpResponse, Reply
from rpcbalancer.proxy.server import H1Server
from rpcbalancer.upstream.pool import H1Transport, NodeRequest, UpstreamResponse


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Upstream(asyncio.Protocol):
    """A keep-alive connection to a node, one request at a time."""

    def __init__(self, pool: list[_Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply: Callable[[bytes], None] | None = None
        self.body: list[bytes] = []
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        reply, self.reply = self.reply, None
        body, self.body = b"".join(self.body), []
        if self.parser.should_keep_alive():
            self.pool.append(self)
        if reply is not None:
            reply(body)


class _Bare(asyncio.Protocol):
    """One client connection of the bare proxy."""

    def __init__(self, nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.nodes = nodes
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        host, port, pool = next(self.nodes)
        data = b"POST / HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n" % host
        data += b"content-length: %d\r\n\r\n%s" % (len(body), body)
        while pool and not pool[-1].alive:
            pool.pop()
        if pool:
            self._send(pool.pop(), data)
            return

        async def connect() -> None:
            _, conn = await self.loop.create_connection(lambda: _Upstream(pool), host, port)
            self._send(conn, data)

        self.loop.create_task(connect())

    def _send(self, conn: _Upstream, data: bytes) -> None:
        assert conn.transport is not None
        conn.reply = self._answer
        conn.transport.write(data)

    def _answer(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )


def _layers_handler(urls: list[str]) -> Callable[[HttpRequest, Reply], Cancellable | None]:
    config = from_mapping({"nodes": urls, "store": "none"})
    nodes = itertools.cycle([Node(i, spec) for i, spec in enumerate(config.nodes)])
    transport = H1Transport()
    headers = {"content-type": "application/json"}

    def handle(request: HttpRequest, reply: Reply) -> Cancellable | None:
        def done(resp: UpstreamResponse | None, error: UpstreamError | None) -> None:
            status, body = (resp.status, resp.body) if resp is not None else (502, b"{}")
            reply(HttpResponse(status, [("content-type", "application/json")], body))

        return transport.start(
            next(nodes), NodeRequest("POST", None, headers, request.body), 5.0, done
        )

    return handle


async def main(mode: str, port: int, urls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if mode == "bare":
        targets = []
        for url in urls:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            targets.append((host.encode(), parts.port or 80, cast(list[_Upstream], [])))
        cycle = itertools.cycle(targets)
        factory: Callable[[], asyncio.Protocol] = lambda: _Bare(cycle, loop)  # noqa: E731
    else:
        handler = _layers_handler(urls)
        limits = from_mapping({"nodes": urls, "store": "none"}).limits
        factory = lambda: H1Server(handler, limits, loop)  # noqa: E731
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["bare", "layers"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    uvloop.run(main(args.mode, args.port, args.nodes))
