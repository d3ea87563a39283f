"""The node transport: the only module that talks to nodes.

One method, :meth:`Transport.send`: send a :class:`NodeRequest` to a node, get its status,
headers and body back, or an :class:`~rpcbalancer.errors.UpstreamError`. The router, the
probes and the race all go through it. The data plane uses the same request at the callback level,
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
* every failure becomes an :class:`UpstreamError` here or in :mod:`.connection` (one
  connection: the request's bytes, the answer's parsing, the try's deadline), and nowhere
  else.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

from ..callbacks import Cancellable, running_loop, until_called
from ..errors import UpstreamConnectError, UpstreamError
from ..fleet.address import NodeAddress
from .connection import MAX_BODY, Connection, Stale
from .names import Names
from .wire import NodeRequest, Target, UpstreamResponse, encode_request

__all__ = [
    "Done",
    "Exchange",
    "H1Transport",
    "NodeRequest",
    "Starter",
    "Transport",
    "UpstreamResponse",
    "starter",
]

log = logging.getLogger(__name__)


class Transport(Protocol):
    async def send(
        self, origin: NodeAddress, request: NodeRequest, timeout: float
    ) -> UpstreamResponse:
        """Send ``request`` to the node at ``origin`` within ``timeout`` seconds. Raises an
        :class:`UpstreamError` on any failure."""
        ...

    async def aclose(self) -> None: ...


Done = Callable[["UpstreamResponse | None", "UpstreamError | None"], None]
"""How a request started with :meth:`H1Transport.start` ends: the answer, or the error."""


class Starter(Protocol):
    """The callback-level form of :meth:`Transport.send`: ``done`` is called once, with
    the answer or the error, unless the returned handle is cancelled first."""

    def __call__(
        self, origin: NodeAddress, request: NodeRequest, timeout: float, done: Done
    ) -> Cancellable: ...


def starter(transport: Transport) -> Starter:
    """``transport.start`` when it has one; else ``send`` run as a task (any transport
    written against the one-method seam still works, at a task per request)."""
    start = getattr(transport, "start", None)
    if start is not None:
        return cast(Starter, start)

    def via_send(
        origin: NodeAddress, request: NodeRequest, timeout: float, done: Done
    ) -> Cancellable:
        async def run() -> None:
            try:
                resp = await transport.send(origin, request, timeout)
            except UpstreamError as exc:
                done(None, exc)
                return
            done(resp, None)

        return asyncio.get_running_loop().create_task(run())

    return via_send


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
        "origin",
        "over",
        "reuse",
        "target",
        "timeout",
    )

    def __init__(
        self,
        client: H1Transport,
        origin: NodeAddress,
        target: Target,
        data: bytes,
        timeout: float,
        deadline: float,
        done: Done,
        reuse: bool,
    ) -> None:
        self.client = client
        self.origin = origin
        self.target = target
        self.data = data
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        # A non-idempotent request (a broadcast) always takes a fresh connection: on a reused
        # one, a close before the answer could not tell "never read" from "read, then died".
        self.reuse = reuse
        self.conn: Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.over = False

    def begin(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self.client
        conn = client.take_idle(self.target, loop.time()) if self.reuse else None
        if conn is None:
            self.connecting = loop.create_task(self._connect())
            return
        self._send(conn)

    def _send(self, conn: Connection) -> None:
        self.conn = conn
        self.client.busy.add(conn)
        conn.request(self)

    async def _connect(self) -> None:
        try:
            conn = await self.client.connect(self.origin, self.target, self.deadline)
        except UpstreamError as exc:
            self.connecting = None
            self._end(None, exc)
            return
        except Exception as other:  # whatever else connecting raised is still a failed try
            self.connecting = None
            self._end(None, UpstreamConnectError(self.origin.name, f"cannot connect ({other})"))
            return
        self.connecting = None
        if self.over:  # cancelled while connecting
            conn.abort()
            return
        self._send(conn)

    def answered(self, conn: Connection, response: UpstreamResponse, keep_alive: bool) -> None:
        client = self.client
        client.busy.discard(conn)
        self.conn = None
        self._end(response, None)
        # Back to the pool after the answer has been handed on, so that whatever the
        # answer sets off at once (a pipelined request) does not land on this connection
        # while its parser is still inside this callback.
        if keep_alive and not conn.closed and conn.exchange is None:
            client.give_back(self.target, conn, conn.loop.time())
        else:
            conn.abort()

    def failed(self, conn: Connection, exc: Exception) -> None:
        self.client.busy.discard(conn)
        self.conn = None
        conn.abort()
        if isinstance(exc, Stale) and not self.over:
            self.reuse = False  # the node closed it while idle: once more, on a fresh one
            self.begin(conn.loop)
            return
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(self.origin.name, str(exc))
        self._end(None, error)

    def _end(self, response: UpstreamResponse | None, error: UpstreamError | None) -> None:
        if self.over:
            return
        self.over = True
        try:
            self.done(response, error)
        except Exception:  # a bug past this point must not look like the node's fault
            log.exception("unexpected error handling the answer of %s", self.origin.name)

    def cancel(self) -> None:
        """Abandon the request: half a request may be in flight, so its connection goes."""
        if self.over:
            return
        self.over = True
        conn, self.conn = self.conn, None
        if conn is not None:
            self.client.busy.discard(conn)
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
        names: Names | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.names = names if names is not None else Names()
        """The node host names' addresses, kept and refreshed in the background."""
        self.max_idle_per_node = max_idle_per_node
        self.idle_ttl = idle_ttl
        self.max_body = max_body
        self._idle: dict[tuple[str, str, int, str | None, bool], collections.deque[Connection]] = {}
        self._targets: dict[tuple[str, str | None, str | None, bool], Target] = {}
        self._tls: dict[bool, ssl.SSLContext] = {}
        self.busy: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin_targets: dict[NodeAddress, Target] = {}
        """Each origin's target, found without building a key on every request."""

    def _target(self, origin: NodeAddress) -> Target:
        target = self._origin_targets.get(origin)
        if target is not None:
            return target
        cache_key = (origin.url, origin.sni, origin.host_header, origin.verify_tls)
        target = self._targets.get(cache_key)
        if target is None:
            parts = urlsplit(origin.url)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            port = parts.port or (443 if tls else 80)
            sni = (origin.sni or host) if tls else None
            netloc = origin.host_header or parts.netloc.rpartition("@")[2]
            target = Target(
                key=(parts.scheme, host, port, sni, origin.verify_tls),
                host=host,
                port=port,
                tls=self._tls_context(origin.verify_tls) if tls else None,
                sni=sni,
                host_header=netloc.encode("idna" if not netloc.isascii() else "ascii"),
                path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            )
            self._targets[cache_key] = target
        if len(self._origin_targets) >= 4096:  # nodes come and go with DNS: keep it bounded
            self._origin_targets.clear()
        self._origin_targets[origin] = target
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
        self, origin: NodeAddress, request: NodeRequest, timeout: float, done: Done
    ) -> Exchange:
        """Send ``request`` to the node at ``origin``; ``done(answer, None)`` or
        ``done(None, error)`` is called once, from the loop, unless the returned exchange is
        cancelled first."""
        target = self._target(origin)
        data = encode_request(origin, target, request)
        loop = self._loop = running_loop(self._loop)
        exchange = Exchange(
            self, origin, target, data, timeout, loop.time() + timeout, done, request.idempotent
        )
        exchange.begin(loop)
        return exchange

    async def send(
        self, origin: NodeAddress, request: NodeRequest, timeout: float
    ) -> UpstreamResponse:
        def begin(
            done: Callable[[tuple[UpstreamResponse | None, UpstreamError | None]], None],
        ) -> Exchange:
            return self.start(origin, request, timeout, lambda r, e: done((r, e)))

        response, error = await until_called(begin)
        if error is not None:
            raise error
        assert response is not None
        return response

    def take_idle(self, target: Target, now: float) -> Connection | None:
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()  # most recently used first: the likeliest to be alive
            if not conn.closed and now - conn.idle_since < self.idle_ttl:
                conn.reused = True
                return conn
            conn.abort()
        return None

    def give_back(self, target: Target, conn: Connection, now: float) -> None:
        idle = self._idle.setdefault(target.key, collections.deque())
        if len(idle) >= self.max_idle_per_node:
            conn.abort()
            return
        conn.idle_since = now
        idle.append(conn)

    async def connect(self, origin: NodeAddress, target: Target, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        budget = min(self.connect_timeout, max(deadline - loop.time(), 0.0))
        try:
            async with asyncio.timeout(budget):
                addresses = await self.names.addresses(target.host, target.port)
                conn = await self._open(loop, origin, target, addresses)
        except TimeoutError:
            raise UpstreamConnectError(
                origin.name, f"connect timed out after {budget:.2f}s"
            ) from None
        except socket.gaierror as unresolved:
            why = unresolved.strerror or unresolved
            raise UpstreamConnectError(
                origin.name, f"cannot resolve {target.host} ({why})"
            ) from None
        except ssl.SSLCertVerificationError as bad:
            # Say what is wrong with it (expired, another host's, an unknown issuer): the
            # node's exclusion on /status reads this.
            problem = str(bad.verify_message or bad.reason or bad)
            raise UpstreamConnectError(
                origin.name, f"TLS certificate rejected: {problem}"
            ) from None
        except ssl.SSLError as tls:
            raise UpstreamConnectError(origin.name, f"TLS failed ({tls.reason or tls})") from None
        except OSError as exc:
            why = (
                exc.strerror.lower()
                if exc.strerror and "call failed" not in exc.strerror
                else _errno_text(exc)
            )
            raise UpstreamConnectError(origin.name, f"cannot connect ({why})") from None
        return conn

    async def _open(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: NodeAddress,
        target: Target,
        addresses: list[str],
    ) -> Connection:
        """A connection to the first of ``addresses`` that takes one (TLS names the host)."""
        for address in addresses[:-1]:
            try:
                return await self._open_one(loop, origin, target, address)
            except OSError:
                continue
        return await self._open_one(loop, origin, target, addresses[-1])

    async def _open_one(
        self, loop: asyncio.AbstractEventLoop, origin: NodeAddress, target: Target, address: str
    ) -> Connection:
        _, conn = await loop.create_connection(
            lambda: Connection(loop, self.max_body, origin.name),
            address,
            target.port,
            ssl=target.tls,
            server_hostname=target.sni,
        )
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
        for conn in list(self.busy):
            conn.abort()
        self._idle.clear()
        self.names.close()
        await asyncio.sleep(0)  # let the transports finish closing


def _errno_text(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
