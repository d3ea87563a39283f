"""The node transport: the only module that talks to nodes.

One method, :meth:`Transport.send`: send a request to a node, get its status, headers and
body back, or an :class:`~rpcbalancer.errors.UpstreamError`. The router, the probes and the
race all go through it. The data plane uses the same request at the callback level,
:meth:`H1Transport.start`: no task, future or timer of its own per request, which is what a
forwarded request costs most in Python (``send`` is a thin wrapper over it).

:class:`H1Transport` is a pooled keep-alive HTTP/1.1 client written at the protocol level
(an ``asyncio.Protocol`` per connection, ``httptools`` parsing the answers), so a forwarded
request costs a write and a parse, not a stack of library layers. It works on any asyncio
loop (uvloop in the server, the default loop in Lambda). What it guarantees:

* connections are reused while the node keeps them alive; idle ones older than
  ``idle_ttl`` or closed by the node are dropped before use;
* a request that fails on a *reused* connection before any byte of the answer arrived
  (the node closed it while idle) is sent once more on a fresh connection; a request that
  is not idempotent (a broadcast) never takes a reused connection, so that a failure can
  always tell "never sent" (connect failed) from "may have arrived";
* answers framed by Content-Length, chunked encoding or connection close are read whole,
  up to ``max_body`` bytes; redirects are answers (never followed);
* ``https://`` nodes get TLS with SNI and certificate verification (unless the node says
  ``verify_tls: false``); a pinned address (DNS expansion) keeps the name for SNI and Host;
* every failure becomes an :class:`UpstreamError` here, and nowhere else;
* a try's deadline is kept by its connection's one timer, armed when the connection first
  carries a request and re-armed only when it fires early: not a timer per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from .callbacks import Cancellable, until_called
from .errors import UpstreamBadResponse, UpstreamConnectError, UpstreamError, UpstreamTimeout
from .nodes import Node

log = logging.getLogger(__name__)

# Node answers are handed to clients with these headers only; the rest is the node's business.
_KEPT_HEADERS = frozenset({b"content-type", b"cache-control", b"retry-after"})
MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)  # built per request: frozen would cost a setattr call per field
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return "application/json"


class Transport(Protocol):
    async def send(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        *,
        idempotent: bool = True,
    ) -> UpstreamResponse:
        """Send one request to ``node``; ``path`` (with query) replaces the node URL's path
        when given. Raises an :class:`UpstreamError` on any failure."""
        ...

    async def aclose(self) -> None: ...


Done = Callable[["UpstreamResponse | None", "UpstreamError | None"], None]
"""How a request started with :meth:`H1Transport.start` ends: the answer, or the error."""


class Starter(Protocol):
    """The callback-level form of :meth:`Transport.send`: ``done`` is called once, with
    the answer or the error, unless the returned handle is cancelled first."""

    def __call__(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        idempotent: bool,
        done: Done,
    ) -> Cancellable: ...


def running_loop(cached: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """The running loop: ``cached`` while it runs. ``asyncio.get_running_loop`` costs a
    ``getpid`` system call on Python 3.11, too dear for every request."""
    if cached is not None and cached.is_running():
        return cached
    return asyncio.get_running_loop()


def starter(transport: Transport) -> Starter:
    """``transport.start`` when it has one; else ``send`` run as a task (any transport
    written against the one-method seam still works, at a task per request)."""
    start = getattr(transport, "start", None)
    if start is not None:
        return cast(Starter, start)

    def via_send(
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        idempotent: bool,
        done: Done,
    ) -> Cancellable:
        async def run() -> None:
            try:
                resp = await transport.send(
                    node, method, path, headers, body, timeout, idempotent=idempotent
                )
            except UpstreamError as exc:
                done(None, exc)
                return
            done(resp, None)

        return asyncio.get_running_loop().create_task(run())

    return via_send


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a node's requests go, parsed once per node URL."""

    key: tuple[str, str, int, str | None, bool]
    host: str
    port: int
    tls: ssl.SSLContext | None
    sni: str | None
    host_header: bytes
    path: str


class _Stale(Exception):
    """A reused connection failed before any answer: safe to retry on a fresh one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a node; one request (an :class:`Exchange`) at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int, name: str) -> None:
        self.loop = loop
        self.max_body = max_body
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
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
                self._fail(_Stale())
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
                self._fail(_Stale())
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

    def request(self, exchange: Exchange) -> None:
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

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and self.exchange is None

    def _finish(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            exchange.answered(self, UpstreamResponse(self._status, tuple(self._headers), body))

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


class Exchange:
    """One request to a node, from :meth:`H1Transport.start` until ``done`` is called
    (exactly once) or :meth:`cancel`."""

    __slots__ = (
        "client",
        "conn",
        "connecting",
        "data",
        "deadline",
        "done",
        "node",
        "over",
        "reuse",
        "target",
        "timeout",
    )

    def __init__(
        self,
        client: H1Transport,
        node: Node,
        target: _Target,
        data: bytes,
        timeout: float,
        deadline: float,
        done: Done,
        reuse: bool,
    ) -> None:
        self.client = client
        self.node = node
        self.target = target
        self.data = data
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        # A non-idempotent request (a broadcast) always takes a fresh connection: on a reused
        # one, a close before the answer could not tell "never read" from "read, then died".
        self.reuse = reuse
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.over = False

    def begin(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self.client
        conn = client._take_idle(self.target, loop.time()) if self.reuse else None
        if conn is None:
            self.connecting = loop.create_task(self._connect())
            return
        self._send(conn)

    def _send(self, conn: _Connection) -> None:
        self.conn = conn
        self.client._busy.add(conn)
        conn.request(self)

    async def _connect(self) -> None:
        try:
            conn = await self.client._connect(self.node, self.target, self.deadline)
        except UpstreamError as exc:
            self.connecting = None
            self._end(None, exc)
            return
        except Exception as exc:  # whatever else connecting raised is still a failed try
            self.connecting = None
            self._end(None, UpstreamConnectError(self.node.name, f"cannot connect ({exc})"))
            return
        self.connecting = None
        if self.over:  # cancelled while connecting
            conn.abort()
            return
        self._send(conn)

    def answered(self, conn: _Connection, response: UpstreamResponse) -> None:
        client = self.client
        client._busy.discard(conn)
        self.conn = None
        self._end(response, None)
        # Back to the pool after the answer has been handed on, so that whatever the
        # answer sets off at once (a pipelined request) does not land on this connection
        # while its parser is still inside this callback.
        if conn.reusable:
            client._give_back(self.target, conn, conn.loop.time())
        else:
            conn.abort()

    def failed(self, conn: _Connection, exc: Exception) -> None:
        self.client._busy.discard(conn)
        self.conn = None
        conn.abort()
        if isinstance(exc, _Stale) and not self.over:
            self.reuse = False  # the node closed it while idle: once more, on a fresh one
            self.begin(conn.loop)
            return
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(self.node.name, str(exc))
        self._end(None, error)

    def _end(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        if self.over:
            return
        self.over = True
        try:
            self.done(response, error)
        except Exception:  # a bug past this point must not look like the node's fault
            log.exception("unexpected error handling the answer of %s", self.node.name)

    def cancel(self) -> None:
        """Abandon the request: half a request may be in flight, so its connection goes."""
        if self.over:
            return
        self.over = True
        conn, self.conn = self.conn, None
        if conn is not None:
            self.client._busy.discard(conn)
            conn.abort()
        if self.connecting is not None:
            self.connecting.cancel()


class H1Transport:
    """Pooled keep-alive HTTP/1.1 client to the nodes."""

    def __init__(
        self,
        connect_timeout: float = 2.0,
        *,
        max_idle_per_node: int = 64,
        idle_ttl: float = 30.0,
        max_body: int = MAX_BODY,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle_per_node = max_idle_per_node
        self.idle_ttl = idle_ttl
        self.max_body = max_body
        self._idle: dict[
            tuple[str, str, int, str | None, bool], collections.deque[_Connection]
        ] = {}
        self._targets: dict[tuple[str, str | None, str | None, bool], _Target] = {}
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._busy: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._node_targets: dict[Node, _Target] = {}
        """Each node's target, found without building a key on every request."""

    def _target(self, node: Node) -> _Target:
        target = self._node_targets.get(node)
        if target is not None:
            return target
        cache_key = (node.url, node.sni, node.host_header, node.verify_tls)
        target = self._targets.get(cache_key)
        if target is None:
            parts = urlsplit(node.url)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            port = parts.port or (443 if tls else 80)
            sni = (node.sni or host) if tls else None
            netloc = node.host_header or parts.netloc.rpartition("@")[2]
            target = _Target(
                key=(parts.scheme, host, port, sni, node.verify_tls),
                host=host,
                port=port,
                tls=self._tls_context(node.verify_tls) if tls else None,
                sni=sni,
                host_header=netloc.encode("idna" if not netloc.isascii() else "ascii"),
                path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            )
            self._targets[cache_key] = target
        if len(self._node_targets) >= 4096:  # nodes come and go with DNS: keep it bounded
            self._node_targets.clear()
        self._node_targets[node] = target
        return target

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        context = self._tls.get(verify)
        if context is None:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls[verify] = context
        return context

    def start(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        idempotent: bool,
        done: Done,
    ) -> Exchange:
        """Send a request to ``node``; ``done(answer, None)`` or ``done(None, error)`` is
        called once, from the loop, unless the returned exchange is cancelled first."""
        target = self._target(node)
        data = _encode(method, node, target, path, headers, body)
        loop = self._loop = running_loop(self._loop)
        exchange = Exchange(
            self, node, target, data, timeout, loop.time() + timeout, done, idempotent
        )
        exchange.begin(loop)
        return exchange

    async def send(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        *,
        idempotent: bool = True,
    ) -> UpstreamResponse:
        def begin(
            done: Callable[[tuple[UpstreamResponse | None, UpstreamError | None]], None],
        ) -> Exchange:
            return self.start(
                node, method, path, headers, body, timeout, idempotent, lambda r, e: done((r, e))
            )

        response, error = await until_called(begin)
        if error is not None:
            raise error
        assert response is not None
        return response

    def _take_idle(self, target: _Target, now: float) -> _Connection | None:
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()  # most recently used first: the likeliest to be alive
            if not conn.closed and now - conn.idle_since < self.idle_ttl:
                conn.reused = True
                return conn
            conn.abort()
        return None

    def _give_back(self, target: _Target, conn: _Connection, now: float) -> None:
        idle = self._idle.setdefault(target.key, collections.deque())
        if len(idle) >= self.max_idle_per_node:
            conn.abort()
            return
        conn.idle_since = now
        idle.append(conn)

    async def _connect(self, node: Node, target: _Target, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        budget = min(self.connect_timeout, max(deadline - loop.time(), 0.0))
        try:
            async with asyncio.timeout(budget):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.max_body, node.name),
                    target.host,
                    target.port,
                    ssl=target.tls,
                    server_hostname=target.sni,
                )
        except TimeoutError:
            raise UpstreamConnectError(
                node.name, f"connect timed out after {budget:.2f}s"
            ) from None
        except socket.gaierror as exc:
            raise UpstreamConnectError(
                node.name, f"cannot resolve {target.host} ({exc.strerror or exc})"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamConnectError(node.name, f"TLS failed ({exc.reason or exc})") from None
        except OSError as exc:
            why = (
                exc.strerror.lower()
                if exc.strerror and "call failed" not in exc.strerror
                else _errno_text(exc)
            )
            raise UpstreamConnectError(node.name, f"cannot connect ({why})") from None
        return conn

    async def prune(self) -> int:
        """Close idle connections older than ``idle_ttl`` (oldest first); how many. Run now
        and then, so that after a burst the pool shrinks back without waiting for traffic."""
        now = asyncio.get_running_loop().time()
        closed = 0
        for idle in self._idle.values():
            while idle and (idle[0].closed or now - idle[0].idle_since >= self.idle_ttl):
                idle.popleft().abort()
                closed += 1
        return closed

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        for conn in list(self._busy):
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def _errno_text(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


_prefixes: dict[tuple[object, ...], tuple[bytes, frozenset[str]]] = {}
# Header lines repeat from request to request (content type, user agent): encoded once.
_lines: dict[tuple[str, str], bytes] = {}
_CACHE_SIZE = 4096


def _encode(
    method: str,
    node: Node,
    target: _Target,
    path: str | None,
    headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    # The request line, Host and the node's own headers are the same for every request to a
    # node: encoded once (keyed by the node itself, which the cache keeps alive: its id
    # could otherwise be reused by a node made later). The request's headers follow.
    key = (method, node, path)
    cached = _prefixes.get(key)
    if cached is None:
        node_headers = node.headers
        lines = [
            f"{method} {path or target.path} HTTP/1.1\r\n".encode("latin-1"),
            b"host: " + target.host_header + b"\r\n",
        ]
        lines += [
            f"{k}: {v}\r\n".encode("latin-1")
            for k, v in node_headers.items()
            if k.lower() not in _FRAMING
        ]
        own = frozenset(k.lower() for k in node_headers) | _FRAMING if node_headers else _FRAMING
        cached = (b"".join(lines), own)
        if len(_prefixes) >= _CACHE_SIZE:
            _prefixes.clear()
        _prefixes[key] = cached
    prefix, skip = cached
    parts = [prefix]
    if skip is _FRAMING:  # the node has no headers of its own (the usual case)
        lines_cache = _lines
        for pair in headers.items():
            line = lines_cache.get(pair)
            if line is None:
                if pair[0].lower() in _FRAMING:
                    continue
                line = f"{pair[0]}: {pair[1]}\r\n".encode("latin-1")
                if pair[0] in _CONSTANT and len(lines_cache) < _CACHE_SIZE:
                    lines_cache[pair] = line
            parts.append(line)
    else:
        for name, value in headers.items():
            if name.lower() not in skip:  # the node's own headers win
                parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if body is not None:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


# Request headers whose values come from a small set (worth keeping encoded); the others
# (request ids, client addresses) are new on every request.
_CONSTANT = frozenset({"content-type", "accept", "user-agent"})
_FRAMING = frozenset({"host", "content-length", "connection", "transfer-encoding"})
