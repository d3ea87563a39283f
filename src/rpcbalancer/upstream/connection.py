"""One keep-alive HTTP/1.1 connection to a node.

:class:`Connection` is an ``asyncio.Protocol`` carrying one request at a time (a
:class:`Waiting`, which :mod:`.upstream`'s exchanges are): it writes the request's bytes,
parses the answer with ``httptools`` (framed by Content-Length, chunks or the connection's
close, up to ``max_body`` bytes, keeping only the headers clients may see) and reports the
answer or the failure back. A try's deadline is kept by the connection's one timer, armed
when it first carries a request and re-armed only when it fires early: not a timer per
request. The request's bytes are :mod:`.wire`'s; the pool, retries on stale connections,
connecting and TLS are :mod:`.pool`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol, cast

import httptools

from ..errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout
from .wire import UpstreamResponse

# Node answers are handed to clients with these headers only; the rest is the node's business.
_KEPT_HEADERS = frozenset({b"content-type", b"cache-control", b"retry-after"})
MAX_BODY = 64 * 1024 * 1024


class Waiting(Protocol):
    """A request riding on a :class:`Connection` until its answer or failure."""

    deadline: float
    """When the try times out, in the loop's time."""
    timeout: float
    data: bytes

    def answered(self, conn: Connection, response: UpstreamResponse, keep_alive: bool) -> None:
        """The answer (``keep_alive``: the node keeps the connection open after it)."""
        ...

    def failed(self, conn: Connection, exc: Exception) -> None: ...


class Stale(Exception):
    """A reused connection failed before any answer: safe to retry on a fresh one."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to a node; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int, name: str) -> None:
        self.loop = loop
        self.max_body = max_body
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Waiting | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._received = 0
        self._framed = False
        self._headers_done = False
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP: nothing to tune
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self.exchange is None:
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBadResponse(self.name, f"malformed HTTP answer ({exc})"))
            self._close()

    def eof_received(self) -> bool | None:
        if self.exchange is not None:
            if self._headers_done and not self._framed:
                self._finish()  # an answer delimited by closing the connection
            elif self._received == 0 and self.reused:
                self._fail(Stale())
            else:
                self._fail(
                    UpstreamError(self.name, "connection closed before the answer was complete")
                )
        self._close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self.exchange is not None:
            if self._received == 0 and self.reused:
                self._fail(Stale())
            else:
                why = f"connection lost ({exc})" if exc else "connection closed"
                self._fail(UpstreamError(self.name, why))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in _KEPT_HEADERS:
            self._headers.append((lower.decode("latin-1"), value.decode("latin-1")))
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            self._fail(UpstreamBadResponse(self.name, f"answer larger than {self.max_body} bytes"))
            self._close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- the request ---------------------------------------------------------------------

    def request(self, exchange: Waiting) -> None:
        self._status = self._size = self._received = 0
        self._headers = []
        self._body = []
        self._framed = self._headers_done = self._keep_alive = False
        self.exchange = exchange
        deadline = exchange.deadline
        # One timer per connection: armed when none is, moved only when this try's
        # deadline comes before it; when it fires early it sleeps on (see _check).
        if self.timer is None or deadline < self.timer_at:
            self._disarm()
            self.timer = self.loop.call_at(deadline, self._check)
            self.timer_at = deadline
        assert self.transport is not None
        self.transport.write(exchange.data)

    def _check(self) -> None:
        self.timer = None
        exchange = self.exchange
        if exchange is None or self.closed:
            return
        if self.loop.time() >= exchange.deadline:
            self._fail(UpstreamTimeout(self.name, f"no answer within {exchange.timeout:.2f}s"))
            self.abort()
        else:
            self.timer = self.loop.call_at(exchange.deadline, self._check)
            self.timer_at = exchange.deadline

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _finish(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            response = UpstreamResponse(self._status, tuple(self._headers), body)
            exchange.answered(self, response, self._keep_alive)

    def _fail(self, exc: Exception) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.failed(self, exc)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.exchange = None
        self._disarm()
        if self.transport is not None:
            self.transport.abort()
