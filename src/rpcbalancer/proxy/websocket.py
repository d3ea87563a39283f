"""JSON-RPC over WebSocket: the handshake, and one session per upgraded connection.

Theory of operation
-------------------
The server (:mod:`.server`) parses the ``GET`` that asks for an upgrade like any request
and hands it to :func:`handshake`: a valid one is answered ``101 Switching Protocols`` and
the connection becomes a :class:`Session`; anything else gets its HTTP error. From then on
the ``websockets`` library's sans-IO protocol turns bytes into frames (it answers pings,
runs the closing handshake, enforces ``max_message_bytes``); this module decides.

Each message is one JSON-RPC call or batch, and takes the HTTP way: it is handed to the
gateway as a ``POST`` with the upgrade's headers (its API key, ``X-Forwarded-For``), so
admission, rate limits, routes, the cache, the floors and read-your-writes apply to it as
to any request, and its answer is sent as one text message. Answers go out as they come
(JSON-RPC ids pair them); at most ``limits.max_pipeline`` calls are in flight per
connection, then reading pauses.

``eth_subscribe`` and ``eth_unsubscribe`` are answered here, after the same admission: the
subscriptions are shared per topic across every connection (:mod:`.subscriptions`).

A client that does not read what it is sent is not buffered for without bound: past
``max_buffered_bytes`` unread, its connection is closed (1008, "slow reader"). A quiet
connection is pinged every ``ping_interval`` seconds and closed when the pong does not come
within ``ping_timeout`` (1011).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from ..callbacks import Cancellable
from ..messages import HttpRequest, HttpResponse, error_response
from ..upstream.websocket import DATA, FRAMES, Assembler
from .subscriptions import SubscriptionError

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

SLOW_READER = 1008
GOING_AWAY = 1001
PING_TIMEOUT = 1011
CLOSING = 5.0
"""Seconds a client has to read up to our close and answer it before the connection is cut."""
_DROPPED = ("connection", "upgrade", "sec-websocket-key", "sec-websocket-version",
            "sec-websocket-extensions", "sec-websocket-protocol")  # fmt: skip
"""The handshake's own headers: not passed on with each message."""


def wants_websocket(method: str, headers: dict[str, str]) -> bool:
    """Whether a request asks for a WebSocket (an upgrade to anything else is refused)."""
    return method == "GET" and headers.get("upgrade", "").lower() == "websocket"


def handshake(request: HttpRequest) -> bytes | HttpResponse:
    """The ``101`` that accepts a WebSocket upgrade, or the error that refuses it."""
    headers = request.headers
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if "upgrade" not in tokens:
        return error_response("invalid", "WebSocket: the request lacks 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return error_response(
            "invalid",
            "WebSocket: only version 13 is spoken",
            headers=(("sec-websocket-version", "13"),),
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        return error_response("invalid", "WebSocket: Sec-WebSocket-Key is not a 16-byte nonce")
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )


def open_session(
    gateway: Gateway,
    request: HttpRequest,
    transport: asyncio.Transport,
    on_close: Callable[[], None],
) -> Session | HttpResponse:
    """A connection whose request asks for a WebSocket: its session (the ``101`` written),
    or the error that refuses it."""
    balancer = gateway.balancer
    config = balancer.config.websocket
    if not config.enabled:
        return error_response("invalid", "WebSocket is not served here (websocket.enabled)")
    keys = balancer.keys
    if request.path != "/" and (keys is None or keys.from_path(request.path) is None):
        return error_response("not_found", f"Not found: {request.path} (WebSocket is served at /)")
    if gateway.stats.websocket.get("connections", 0) >= config.max_connections:
        gateway.stats.websocket["refused"] = gateway.stats.websocket.get("refused", 0) + 1
        return error_response(
            "busy",
            f"WebSocket: {config.max_connections} connections open already "
            "(websocket.max_connections); try again later",
            headers=(("retry-after", "1"),),
        )
    accepted = handshake(request)
    if isinstance(accepted, HttpResponse):
        return accepted
    transport.write(accepted)
    return Session(gateway, request, transport, asyncio.get_running_loop(), on_close)


class Session:
    """One client's WebSocket: its messages in, the answers and notifications out."""

    def __init__(
        self,
        gateway: Gateway,
        request: HttpRequest,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[], None],
    ) -> None:
        self.gateway = gateway
        """The gateway serving now (a reload points the session at the new one)."""
        config = gateway.balancer.config
        self.config = config.websocket
        self.max_inflight = config.limits.max_pipeline
        self.transport = transport
        self.loop = loop
        self.on_close = on_close
        self.protocol = ServerProtocol(
            state=State.OPEN, max_size=self.config.max_message_bytes, logger=FRAMES
        )
        self.headers = {k: v for k, v in request.headers.items() if k not in _DROPPED}
        self.headers["content-type"] = "application/json"
        self.path, self.query, self.peer = request.path, request.query, request.peer
        self.inflight: dict[int, Cancellable | None] = {}
        self.next = 0
        self.subscriptions: set[str] = set()
        self.paused = False
        self.closing = False
        """The closing handshake began: nothing more is sent or answered."""
        self.closed = False
        self._message_in = Assembler()
        self.heard = loop.time()
        self.pinged: float | None = None
        self.timer = loop.call_later(self.config.ping_interval, self._tick)
        self.stats = gateway.stats
        self._count("connections")
        self._count("opened")

    def __repr__(self) -> str:
        return f"<Session {self.peer} inflight={len(self.inflight)} subs={len(self.subscriptions)}>"

    def _count(self, what: str, n: int = 1) -> None:
        counts = self.stats.websocket
        counts[what] = counts.get(what, 0) + n

    # -- bytes in ------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        if self.closed:
            return
        self.heard = self.loop.time()
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof(self) -> None:
        self.protocol.receive_eof()
        self._flush()

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in DATA:
            data = self._message_in.add(frame)
            if data is not None:
                self._message(data)
        elif frame.opcode is Opcode.PONG:
            self.pinged = None

    def _message(self, data: bytes) -> None:
        if self.closing:
            return
        self._count("messages_in")
        if b"subscribe" in data:
            asked = _subscription_call(data)
            if asked is not None:
                task = self.loop.create_task(self._subscription(*asked))
                self._track(task)
                return
        request = HttpRequest("POST", self.path, self.query, self.headers, data, self.peer)
        ticket = self.next
        self.next += 1
        self.inflight[ticket] = None

        def reply(response: HttpResponse) -> None:
            if self.inflight.pop(ticket, 0) != 0:
                self._send(response.body)
                self._resume()

        try:
            pending = self.gateway.serve(request, reply)
        except Exception:
            log.exception("unexpected error answering a WebSocket message")
            self.inflight.pop(ticket, None)
            self._send(error_response("internal", "Internal error in the balancer").body)
            return
        if ticket in self.inflight:
            self.inflight[ticket] = pending
            if len(self.inflight) >= self.max_inflight and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def _track(self, task: asyncio.Task[None]) -> None:
        ticket = self.next
        self.next += 1
        self.inflight[ticket] = task

        def done(_: object) -> None:
            if self.inflight.pop(ticket, None) is not None:
                self._resume()

        task.add_done_callback(done)

    def _resume(self) -> None:
        if self.paused and len(self.inflight) <= self.max_inflight // 2 and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    # -- subscriptions -------------------------------------------------------------------

    async def _subscription(self, method: str, ident: Any, params: Any, body: bytes) -> None:
        gateway = self.gateway
        request = HttpRequest("POST", self.path, self.query, self.headers, body, self.peer)
        keys = gateway.balancer.keys
        key = keys.from_path(self.path) if keys is not None and self.path != "/" else None
        ctx = gateway.admission.admit(request, None, key)
        if ctx.answer is None and gateway.admission.may_limit:
            gateway.admission.limit(ctx)
        if ctx.answer is not None:  # refused as the same call over HTTP would be
            self._send(ctx.answer.body)
            return
        hub = gateway.balancer.subscriptions
        if hub is None:
            self._error(ident, -32601, f"{method}: subscriptions are served for EVM chains only")
            return
        if method == "eth_unsubscribe":
            which = params[0] if isinstance(params, list) and params else None
            done = isinstance(which, str) and which in self.subscriptions
            if done and isinstance(which, str):
                self.subscriptions.discard(which)
                hub.unsubscribe(which, self)
            self._result(ident, done)
            return
        if len(self.subscriptions) >= self.config.max_subscriptions:
            limit = self.config.max_subscriptions
            self._count("refused")
            self._error(ident, -32005, f"eth_subscribe: at most {limit} subscriptions per "
                        "connection (websocket.max_subscriptions)")  # fmt: skip
            return
        group = gateway.planner.plan({"method": "eth_subscribe", "params": params}).group.name
        try:
            made = await hub.subscribe(group, params, self)
        except SubscriptionError as exc:
            self._error(ident, exc.code, str(exc))
            return
        if self.closed:
            hub.unsubscribe(made, self)
            return
        self.subscriptions.add(made)
        self._result(ident, made)

    def notify(self, subscription: str, result: bytes) -> None:
        """A notification of one of this client's subscriptions (:class:`.Sink`)."""
        self._send(
            b'{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"'
            + subscription.encode()
            + b'","result":'
            + result
            + b"}}"
        )

    def _result(self, ident: Any, result: Any) -> None:
        self._send(orjson.dumps({"jsonrpc": "2.0", "id": ident, "result": result}))

    def _error(self, ident: Any, code: int, message: str) -> None:
        error = {"code": code, "message": message}
        self._send(orjson.dumps({"jsonrpc": "2.0", "id": ident, "error": error}))

    # -- bytes out -----------------------------------------------------------------------

    def _send(self, body: bytes) -> None:
        if self.closed or not body or self.protocol.state is not State.OPEN:
            return
        self.protocol.send_text(body)
        self._count("messages_out")
        self._flush()
        if self.transport.get_write_buffer_size() > self.config.max_buffered_bytes:
            self._count("slow_readers")
            log.info("WebSocket %s: closed, a slow reader", self.peer)
            self.close(SLOW_READER, "slow reader: too much unread")

    def _flush(self) -> None:
        transport = self.transport
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:  # the protocol ended the stream (a close handshake done or failed)
                self._end()
                return
        if self.protocol.state is State.CLOSED:
            self._end()

    def _tick(self) -> None:
        """The connection's timer: a ping when it is quiet, the close when it stays so."""
        if self.closed:
            return
        now = self.loop.time()
        config = self.config
        if self.pinged is not None and now - self.pinged >= config.ping_timeout:
            self._count("ping_timeouts")
            self.close(PING_TIMEOUT, "no pong in time")
            return
        if self.pinged is None and now - self.heard >= config.ping_interval:
            self.pinged = now
            self.protocol.send_ping(b"")
            self._flush()
        quiet = config.ping_interval - (now - self.heard)
        wait = config.ping_timeout if self.pinged is not None else max(quiet, 0.05)
        self.timer = self.loop.call_later(wait, self._tick)

    # -- the end -------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake: the client reads the code and reason after what it
        was sent, and has ``CLOSING`` seconds to answer before the connection is cut
        (what it sends meanwhile is read and dropped)."""
        if self.closed or self.closing:
            return
        self.closing = True
        self._release()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        if not self.closed:
            self.timer.cancel()
            self.timer = self.loop.call_later(CLOSING, self._abort)

    def retire(self) -> None:
        """The server stops: the client is told to go elsewhere (1001)."""
        self.close(GOING_AWAY, "server restarting")

    def lost(self) -> None:
        self._end()

    def _abort(self) -> None:
        if not self.closed:
            self.transport.abort()  # (what it did not read is dropped with it)
            self._end()

    def _release(self) -> None:
        """Stop what the connection has running: calls in flight, subscriptions."""
        for pending in list(self.inflight.values()):
            if pending is not None:
                pending.cancel()
        self.inflight.clear()
        hub = self.gateway.balancer.subscriptions
        if hub is not None and self.subscriptions:
            hub.drop(self)
            self.subscriptions.clear()

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self._release()
        self._count("connections", -1)
        self.transport.close()
        self.on_close()


def _subscription_call(data: bytes) -> tuple[str, Any, Any, bytes] | None:
    """``(method, id, params, body)`` when the message is one ``eth_subscribe`` or
    ``eth_unsubscribe`` call, else None (the gateway answers it, errors included)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    method = doc.get("method")
    if method not in ("eth_subscribe", "eth_unsubscribe"):
        return None
    return method, doc.get("id"), doc.get("params"), data
