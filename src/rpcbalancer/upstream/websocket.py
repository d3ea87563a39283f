"""A WebSocket to one node: JSON-RPC calls and the notifications of its subscriptions.

The subscriptions' side of the node (:mod:`..proxy.subscriptions` holds one per node it
uses, for every topic it carries there). The framing is the ``websockets`` library's
sans-IO client (``ClientProtocol``): this module owns the socket and the loop, the library
turns bytes into frames and back, so the same code serves ``ws://`` and ``wss://`` and no
thread or reader task is made.

A call is written with an id of ours and answered through a future; a message without an
id that names a subscription (``eth_subscription``) goes to ``on_notice`` with the node's
subscription id and the result, already parsed. When the socket ends (closed by the node,
reset, a ping unanswered) every call waiting fails with an :class:`.UpstreamError` and
``on_lost`` is called once, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from ..errors import UpstreamError

log = logging.getLogger(__name__)
FRAMES = logging.getLogger("rpcbalancer.websocket.frames")
"""The ``websockets`` library's own log: its debug lines show a handshake's request line,
whose path may hold a node's key, so it never logs below warnings."""
FRAMES.setLevel(logging.WARNING)

DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
"""The opcodes of a message's frames."""


class Assembler:
    """A message put back together from its data frames (one, or several)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, frame: Frame) -> bytes | None:
        """The whole message once its last frame came; None before."""
        self.parts.append(bytes(frame.data))
        if not frame.fin:
            return None
        parts, self.parts = self.parts, []
        return parts[0] if len(parts) == 1 else b"".join(parts)


Notice = Callable[[str, Any], None]
"""A subscription's notification: the node's subscription id and its result."""


class NodeSocket(asyncio.Protocol):
    """One WebSocket connection to a node."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str],
        on_notice: Notice,
        on_lost: Callable[[str], None],
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        """The node's name (shown; the URL may hold a key)."""
        self.url = url
        self.uri = parse_uri(url)
        self.protocol = ClientProtocol(self.uri, max_size=max_size, logger=FRAMES)
        self.headers = headers
        self.on_notice = on_notice
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 1
        self.reason: str | None = None
        """Why the socket ended (None while it is open)."""
        self.heard = time.monotonic()
        """When the node last sent anything (a pong included)."""
        self.pinged = 0.0
        self._message_in = Assembler()

    def __repr__(self) -> str:
        return f"<NodeSocket {self.name} {'open' if self.reason is None else self.reason}>"

    @classmethod
    async def open(
        cls,
        name: str,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        on_notice: Notice,
        on_lost: Callable[[str], None],
        verify_tls: bool = True,
    ) -> NodeSocket:
        """Connect and finish the handshake within ``timeout`` seconds, or raise
        :class:`.UpstreamError`."""
        loop = asyncio.get_running_loop()
        made = cls(name, url, headers, on_notice, on_lost)
        uri = made.uri
        context: ssl.SSLContext | None = None
        if uri.secure:
            context = ssl.create_default_context()
            if not verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: made, uri.host, uri.port, ssl=context)
                await made.opened
        except UpstreamError:
            made.close()
            raise
        except TimeoutError:
            made.close()
            raise UpstreamError(name, f"WebSocket: no handshake in {timeout}s") from None
        except OSError as exc:
            made.close()
            raise UpstreamError(name, f"WebSocket: {exc.strerror or exc}") from None
        return made

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        request = self.protocol.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        code = self.protocol.close_code
        self._end(
            f"closed by the node ({code})"
            if code is not None
            else f"connection lost ({exc})"
            if exc
            else "connection closed"
        )

    # -- calls --------------------------------------------------------------------------

    def call(self, method: str, params: list[Any]) -> asyncio.Future[Any]:
        """Send one call; the future has its result, or an :class:`.UpstreamError`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.reason is not None or self.protocol.state is not State.OPEN:
            future.set_exception(UpstreamError(self.name, f"WebSocket closed: {self.reason}"))
            return future
        ident = self.next_id
        self.next_id += 1
        self.calls[ident] = future
        body = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
        self.protocol.send_text(orjson.dumps(body))
        self._flush()
        return future

    def ping(self, now: float) -> None:
        self.pinged = now
        if self.reason is None and self.protocol.state is State.OPEN:
            self.protocol.send_ping(b"")
            self._flush()

    def close(self) -> None:
        if self.transport is not None and self.protocol.state is State.OPEN:
            with contextlib.suppress(Exception):
                self.protocol.send_close(1000, "")
                self._flush()
        if self.transport is not None:
            self.transport.close()
        self._end("closed by the balancer")

    # -- what comes in ---------------------------------------------------------------------

    def _handshake(self, response: Response) -> None:
        if self.protocol.handshake_exc is not None:
            self._fail(f"handshake refused: {self.protocol.handshake_exc}")
        elif not self.opened.done():
            self.opened.set_result(None)

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in DATA:
            data = self._message_in.add(frame)
            if data is not None:
                self._message(data)
        elif frame.opcode is Opcode.CLOSE:
            self._end(f"closed by the node ({self.protocol.close_code})")

    def _message(self, data: bytes) -> None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("%s sent a WebSocket message that is not JSON; closing", self.name)
            self._fail("a message that is not JSON")
            return
        for item in doc if isinstance(doc, list) else [doc]:
            if not isinstance(item, dict):
                continue
            ident = item.get("id")
            if ident is not None:
                future = self.calls.pop(ident, None) if isinstance(ident, int) else None
                if future is None or future.done():
                    continue
                if "error" in item:
                    error = item["error"]
                    text = error.get("message") if isinstance(error, dict) else error
                    future.set_exception(UpstreamError(self.name, str(text)))
                else:
                    future.set_result(item.get("result"))
                continue
            params = item.get("params")
            if isinstance(params, dict) and "subscription" in params:
                self.on_notice(str(params["subscription"]), params.get("result"))

    # -- the end -------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:  # the protocol's end of the stream
                transport.close()
        if self.protocol.state is State.CLOSED and not transport.is_closing():
            transport.close()

    def _fail(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        error = UpstreamError(self.name, f"WebSocket: {reason}")
        if not self.opened.done():
            self.opened.set_exception(error)
            self.opened.exception()  # (retrieved: an open that failed is reported by open)
        for future in self.calls.values():
            if not future.done():
                future.set_exception(error)
        self.calls.clear()
        self.on_lost(reason)
