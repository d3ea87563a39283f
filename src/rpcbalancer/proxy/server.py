"""The data plane's HTTP/1.1 server: an ``asyncio.Protocol`` per connection, ``httptools``
(llhttp) parsing, the gateway deciding.

Theory of operation
-------------------
Bytes arrive in :meth:`data_received` and go straight to the parser, whose callbacks
collect one request at a time (URL, headers, body). A complete request joins the
connection's queue and is handed to the handler with a reply callback; the next one
waits until that reply is written, so pipelined requests are answered in the order they
came. No task, future or timer is made per request: on the proxy route the whole way to
the node and back is callbacks (see :meth:`.Gateway.serve`).

Limits are enforced while parsing, before anything is buffered beyond them: header bytes
and count (431), body size (413, also up front from Content-Length or on
``Expect: 100-continue``), the time to receive a whole request once it began (408, so a
slow client cannot hold a connection with a trickle), and the idle time between requests
on a kept-alive connection (closed silently). Malformed requests get 400 and the
connection is closed, since the parser cannot find the next request after an error.

Back-pressure both ways: when the peer reads slower than we write, the next response
waits until the transport drains; when the queue of pipelined requests grows long,
reading pauses until it shrinks. A client that half-closes (sends EOF) after its requests
still gets every answer before the connection closes.

Overload: with a :class:`~.overload.Guard`, each request asks it first; a worker with a
standing queue or too many requests in flight answers 503 at once, before the gateway sees
the request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from enum import Enum
from typing import Protocol, cast

import httptools

from ..callbacks import Cancellable
from ..config import ServerLimits
from ..messages import HttpRequest, HttpResponse, Reply, error_response, internal_error
from .h1wire import HEADER_CACHE_SIZE, encode, refusal_bytes, whole_post
from .overload import Guard

log = logging.getLogger(__name__)

Handler = Callable[[HttpRequest, Reply], Cancellable | None]
"""Answers a request through the reply callback (:meth:`.Gateway.serve`)."""


class Upgraded(Protocol):
    """What a connection becomes after a WebSocket upgrade (:class:`.websocket.Session`)."""

    def received(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def lost(self) -> None: ...
    def retire(self) -> None: ...


Upgrade = Callable[[HttpRequest, asyncio.Transport, Callable[[], None]], "Upgraded | HttpResponse"]
"""Takes a connection whose request asks for a WebSocket: the session it becomes (the
``101`` written), or the error that refuses it."""


class Phase(Enum):
    """Where a connection is: waiting for a request, answering one (the handler has it and
    the reply is not written yet), or closed. Pipelined requests wait in its queue."""

    IDLE = "idle"
    ANSWERING = "answering"
    CLOSED = "closed"


IDLE, ANSWERING, CLOSED = Phase.IDLE, Phase.ANSWERING, Phase.CLOSED


class FlowControl:
    """Back-pressure both ways on one connection: reading pauses while too many pipelined
    requests wait, writing waits while the peer reads slower than we write."""

    __slots__ = ("reading_paused", "transport", "writing_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reading_paused = False
        self.writing_paused = False

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()


class _Reject(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        """Its entry in the failure table (:data:`~rpcbalancer.messages.FAILURES`)."""
        self.message = message


_names: dict[bytes, str] = {}
"""Request header names as they come, lower-cased (clients send the same few names)."""


class H1Server(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
        upgrade: Upgrade | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.handler = handler
        self.upgrade = upgrade
        """Where a WebSocket upgrade goes (None: refused, as any upgrade)."""
        self.guard = guard
        """The worker's admission by load (:mod:`.overload`), if any."""
        self.counted = False
        """The request being answered counts in the guard's requests in flight."""
        self.upgrading: HttpRequest | None = None
        self.upgraded: Upgraded | None = None
        """The WebSocket session this connection became, if it did."""
        self.limits = limits
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.queue: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self.phase = IDLE
        self.flow: FlowControl | None = None
        self.pending: Cancellable | None = None
        """That request's handle, to stop it when the client goes away."""
        self.answering: tuple[bool, bool] = (False, True)
        """That request's (HEAD?, keep-alive?)."""
        self.dispatching = False
        self._reply_to = self._reply  # made once: a bound method is made on every access
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_body = limits.max_body
        self._max_pipeline = limits.max_pipeline
        self.eof = False
        """The client half-closed: the answers it is owed are written, then the connection
        closes."""
        self.retiring = False
        """The server is stopping: the next answer closes the connection (see
        :meth:`retire`)."""
        # One timer per connection, re-armed only when it fires: per-request timers would
        # cost a heap operation each. It checks the two deadlines below.
        self.timer: asyncio.TimerHandle | None = None
        self.request_started: float | None = None
        self.last_active = 0.0
        self._url = b""
        self._version_checked = False
        """The HTTP version is checked on a connection's first request (a client speaks one
        version on a connection)."""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # -- connection lifetime -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.phase is ANSWERING

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_active = self.loop.time()
        self._arm(min(self.limits.idle_timeout, self.limits.request_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded is not None:
            self.upgraded.lost()
        self.phase = CLOSED
        self._disarm()
        self.queue.clear()
        self._abandon()  # nobody is left to answer; the router counts it abandoned

    def eof_received(self) -> bool:
        if self.upgraded is not None:
            self.upgraded.eof()
            return True
        self.eof = True
        if self.phase is IDLE and not self.queue:
            self.close()
            return True
        # Half-closed with answers still owed: keep the transport open to write them.
        return True

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.writing_paused = True

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.writing_paused = False
        self._next()

    def data_received(self, data: bytes) -> None:
        upgraded = self.upgraded
        if upgraded is not None:
            upgraded.received(data)
            return
        if self.phase is CLOSED:
            return
        guard = self.guard
        if guard is not None and guard.refuses_next() and self.refuse_unread(data, guard):
            return
        try:
            self.parser.feed_data(data)
        except _Reject as reject:
            self._refuse(reject.kind, reject.message)
        except httptools.HttpParserUpgrade as upgrade:
            request, self.upgrading = self.upgrading, None
            if request is None:
                self._refuse("invalid", "Protocol upgrades are not supported")
            else:
                self._switch(request, data[upgrade.args[0] :])
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, _Reject):
                self._refuse(cause.kind, cause.message)
            else:
                self._refuse("parse", f"Malformed HTTP request ({error})")

    def refuse_unread(self, data: bytes, guard: Guard) -> bool:
        """Refuse the request in ``data`` without parsing it, when the guard will refuse it,
        the connection is between requests, and ``data`` is exactly one whole request as a
        client sends it in one write (:func:`.h1wire.whole_post`: only its framing is read,
        which is all a refusal needs). Anything else goes to the parser (False), which has
        the guard refuse it all the same."""
        flow = self.flow
        if (
            flow is None
            or flow.writing_paused
            or self.request_started is not None  # the parser is midway through one
            or self.phase is not IDLE
            or self.queue
            or self.eof
            or self.retiring
            or not whole_post(data, self._max_header_bytes)
        ):
            return False
        assert self.transport is not None
        refusal = guard.admit()
        assert refusal is not None  # (it said it would refuse)
        self.transport.write(refusal_bytes(refusal))
        self.last_active = self.loop.time()
        return True

    # -- parser callbacks ----------------------------------------------------------------

    # A request's state is reset when the previous one completes; its clock starts with its
    # first bytes (and while it runs, the parser is midway through a request).

    def on_message_begin(self) -> None:
        self.request_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject("uri_too_long", "Request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._header_bytes + len(name) + len(value) + 4
        self._header_bytes = size
        if size > self._max_header_bytes:
            raise _Reject("headers_too_large", "Request headers too large")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise _Reject("headers_too_large", "Too many request headers")
        key = _names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_names) < HEADER_CACHE_SIZE:
                _names[name] = key
        text = value.decode("latin-1")
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        url = self._url
        parser = self.parser
        if url[:1] != b"/" and not (url == b"*" and parser.get_method() == b"OPTIONS"):
            raise _Reject("invalid", "Only origin-form request targets are accepted (no proxying)")
        if not self._version_checked:  # (httptools formats the version at every ask)
            if parser.get_http_version() not in ("1.1", "1.0"):
                raise _Reject("http_version", "HTTP version not supported: use HTTP/1.1 or 1.0")
            self._version_checked = True
        headers = self._headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise _Reject("too_large", f"Request body larger than {self._max_body} bytes")
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise _Reject("expectation", "Only 'Expect: 100-continue' is supported")
            if self.transport is not None and not self.queue and self.phase is IDLE:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise _Reject("too_large", f"Request body larger than {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.request_started = None
        path, _, query = self._url.partition(b"?")
        parts = self._body
        parser = self.parser
        if "upgrade" in self._headers and self.upgrade is not None and parser.should_upgrade():
            websocket = self._headers.get("upgrade", "").lower() == "websocket"
            if websocket and parser.get_method() == b"GET":
                self.upgrading = HttpRequest(
                    "GET", path.decode("latin-1"), query.decode("latin-1"), self._headers,
                    b"", self.peer,
                )  # fmt: skip
                self._url, self._headers, self._header_bytes = b"", {}, 0
                return
        request = HttpRequest(
            parser.get_method().decode("ascii"),
            path.decode("latin-1"),
            query.decode("latin-1") if query else "",
            self._headers,
            parts[0] if len(parts) == 1 else b"".join(parts),
            self.peer,
        )
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        keep_alive = parser.should_keep_alive()
        queue = self.queue
        flow = self.flow
        assert flow is not None
        if self.phase is IDLE and not (queue or self.dispatching or flow.writing_paused):
            self._serve(request, keep_alive)  # the usual case: one request at a time
            return
        queue.append((request, keep_alive))
        if len(queue) >= self._max_pipeline:
            flow.pause_reading()
        if self.phase is IDLE:
            self._next()

    # -- answering -----------------------------------------------------------------------

    def _serve(self, request: HttpRequest, keep_alive: bool) -> None:
        """Hand one request to the handler. Its answer may come before this returns."""
        self.phase = ANSWERING
        self.answering = (request.method == "HEAD", keep_alive)
        self.dispatching = True  # an answer given at once must not start the next request
        guard = self.guard
        if guard is not None and request.method == "POST":  # (health and metrics: always)
            refusal = guard.admit()
            if refusal is not None:  # overloaded: refused before anything is parsed
                self._reply(refusal)
                self.dispatching = False
                return
            self.counted = True
        try:
            pending = self.handler(request, self._reply_to)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            pending = None
            self._reply(internal_error())
        finally:
            self.dispatching = False
        if self.phase is ANSWERING:  # answered later: keep its handle, to stop it if the
            self.pending = pending  # client goes

    def _next(self) -> None:
        """Hand the queued requests to the handler, one at a time, in order. Loops rather
        than recursing when answers come at once (pipelined requests answered here)."""
        if self.dispatching:
            return
        queue = self.queue
        flow = self.flow
        assert flow is not None
        while queue and self.phase is IDLE and not flow.writing_paused:
            request, keep_alive = queue.popleft()
            if len(queue) < self._max_pipeline // 2:
                flow.resume_reading()
            self._serve(request, keep_alive)
        if self.phase is IDLE and not queue:
            self.last_active = self.loop.time()
            if self.eof:
                self.close()

    def _switch(self, request: HttpRequest, rest: bytes) -> None:
        """The request asked for a WebSocket: the connection becomes one, or is refused."""
        assert self.upgrade is not None and self.transport is not None
        if self.phase is not IDLE or self.queue:
            self._refuse("invalid", "WebSocket upgrade behind requests not answered yet")
            return
        try:
            taken = self.upgrade(request, self.transport, self.close)
        except Exception:
            log.exception("unexpected error upgrading to a WebSocket")
            taken = internal_error()
        if isinstance(taken, HttpResponse):
            self._write(taken, False, False)
            self.close()
            return
        self._disarm()  # (the session keeps its own time: pings)
        self.upgraded = taken
        if rest:
            taken.received(rest)

    def _reply(self, response: HttpResponse) -> None:
        """The handler's answer to the request being answered: write it, go on."""
        if self.phase is not ANSWERING:
            return  # the connection was refused or lost meanwhile
        self.phase = IDLE
        self.pending = None
        guard = self.guard
        if self.counted and guard is not None:
            self.counted = False
            guard.done()
        head, keep_alive = self.answering
        # After the client's EOF, the connection closes with the last answer it is owed.
        if keep_alive and self.eof and not self.queue:
            keep_alive = False
        if self.retiring and not self.queue:
            keep_alive = False  # (the server stops: the client opens its next elsewhere)
        try:
            self._write(response, head, keep_alive)
        except Exception:
            log.exception("unexpected error writing an answer")
            self.close()
            return
        if not keep_alive:
            self.close()
        elif self.queue:
            self._next()
        else:
            self.last_active = self.loop.time()

    def _abandon(self) -> None:
        guard = self.guard
        if self.counted and guard is not None:
            self.counted = False
            guard.done()
        pending, self.pending = self.pending, None
        if self.phase is ANSWERING:
            self.phase = IDLE
        if pending is not None:
            pending.cancel()

    def _write(self, response: HttpResponse, head: bool, keep_alive: bool) -> None:
        if self.transport is None or self.phase is CLOSED:
            return
        self.transport.write(encode(response, head, keep_alive))

    def _refuse(self, kind: str, message: str) -> None:
        """Answer a request that cannot be parsed or is over a limit, then close."""
        if self.transport is None or self.phase is CLOSED:
            return
        self.queue.clear()
        self._abandon()
        self._write(error_response(kind, message), False, False)
        self.close()

    def _arm(self, delay: float) -> None:
        if self.phase is not CLOSED:
            self.timer = self.loop.call_later(max(delay, 0.01), self._check)

    def _check(self) -> None:
        """The connection's timer: refuse a request that takes too long to arrive, close a
        connection idle for too long, else sleep until the nearer of the two deadlines."""
        self.timer = None
        now = self.loop.time()
        limits = self.limits
        if self.request_started is not None:
            left = self.request_started + limits.request_timeout - now
            if left <= 0:
                self._refuse("request_timeout", "Request not received in time")
                return
            self._arm(left)
        elif self.phase is IDLE and not self.queue:
            left = self.last_active + limits.idle_timeout - now
            if left <= 0:
                self.close()
                return
            self._arm(left)
        else:  # answering: idle time starts counting when the answer is written
            self._arm(limits.idle_timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def retire(self, idle_for: float) -> None:
        """The server is stopping: answer what the client sends with ``Connection: close``,
        and close now if the connection has been idle ``idle_for`` seconds (a client that
        uses it often gets its next answer first, and never writes into a closing socket;
        one that left it idle sees it closed before it looks again)."""
        self.retiring = True
        if self.upgraded is not None:
            self.upgraded.retire()
            return
        idle = self.phase is IDLE and not self.queue and self.request_started is None
        if idle and self.loop.time() - self.last_active >= idle_for:
            self.close()

    def close(self) -> None:
        self.phase = CLOSED
        self._disarm()
        if self.transport is not None:
            self.transport.close()
