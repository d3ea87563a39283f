"""The node transport: the only module that talks to nodes.

One method, :meth:`Transport.send`: send a request to a node, get its status, headers and
body back, or an :class:`~rpcbalancer.errors.UpstreamError`. The router, the probes and the
race all go through it.

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
* every failure becomes an :class:`UpstreamError` here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from .errors import UpstreamBadResponse, UpstreamConnectError, UpstreamError, UpstreamTimeout
from .nodes import Node

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
    """One keep-alive connection to a node; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int, name: str) -> None:
        self.loop = loop
        self.max_body = max_body
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
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
        if self.waiter is None:
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBadResponse(self.name, f"malformed HTTP answer ({exc})"))
            self._close()

    def eof_received(self) -> bool | None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
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
        waiter = self.waiter
        if waiter is not None and not waiter.done():
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

    def request(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        self._status = self._size = self._received = 0
        self._headers = []
        self._body = []
        self._framed = self._headers_done = self._keep_alive = False
        self.waiter = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and self.waiter is None

    def _finish(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(UpstreamResponse(self._status, tuple(self._headers), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self, timeout: float) -> None:
        """The try's deadline passed with no complete answer."""
        self._fail(UpstreamTimeout(self.name, f"no answer within {timeout:.2f}s"))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self.waiter = None
        if self.transport is not None:
            self.transport.abort()


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

    def _target(self, node: Node) -> _Target:
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
        target = self._target(node)
        data = _encode(method, target, path, headers, node.headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A non-idempotent request (a broadcast) always takes a fresh connection: on a reused
        # one, a close before the answer could not tell "never read" from "read, then died".
        reuse = idempotent
        while True:
            conn = self._take_idle(target, loop.time()) if reuse else None
            if conn is None:
                conn = await self._connect(node, target, deadline)
            self._busy.add(conn)
            waiter = conn.request(data)
            timer = loop.call_at(deadline, conn.expire, timeout)
            try:
                response = await waiter
            except _Stale:
                reuse = False  # the node closed it while idle: once more, on a fresh one
                continue
            except asyncio.CancelledError:
                conn.abort()  # half a request in flight: the connection cannot be reused
                raise
            finally:
                timer.cancel()
                self._busy.discard(conn)
            if conn.reusable:
                self._give_back(target, conn, loop.time())
            else:
                conn.abort()
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


def _encode(
    method: str,
    target: _Target,
    path: str | None,
    headers: Mapping[str, str],
    node_headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    # The request line, Host and the node's own headers are the same for every request to a
    # node: encoded once. The request's headers (a handful) follow.
    key = (method, target.key, target.host_header, path, tuple(node_headers.items()))
    cached = _prefixes.get(key)
    if cached is None:
        lines = [
            f"{method} {path or target.path} HTTP/1.1\r\n".encode("latin-1"),
            b"host: " + target.host_header + b"\r\n",
        ]
        lines += [
            f"{k}: {v}\r\n".encode("latin-1")
            for k, v in node_headers.items()
            if k.lower() not in _FRAMING
        ]
        own = frozenset(k.lower() for k in node_headers) | _FRAMING
        cached = (b"".join(lines), own)
        if len(_prefixes) < 4096:
            _prefixes[key] = cached
    prefix, skip = cached
    parts = [prefix]
    for name, value in headers.items():
        if name.lower() not in skip:  # the node's own headers win
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if body is not None:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


_FRAMING = frozenset({"host", "content-length", "connection", "transfer-encoding"})
