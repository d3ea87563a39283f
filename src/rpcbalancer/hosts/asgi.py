"""The ASGI app: a thin adapter from ASGI to the gateway, for any ASGI server (and Lambda).

The app owns the balancer's lifetime through the ASGI lifespan protocol: the balancer
opens (first probe round, background probes) on startup and closes on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..balancer import Balancer
from ..config import Config
from ..messages import HttpRequest, HttpResponse, error_response, internal_error
from ..proxy.gateway import Gateway

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 8 * 1024 * 1024


class App:
    """``App(config)`` is an ASGI application serving the balancer."""

    def __init__(self, config: Config, balancer: Balancer | None = None) -> None:
        self.config = config
        self.balancer = balancer or Balancer(config)
        self.gateway = Gateway(self.balancer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.balancer.__aenter__()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.balancer.__aexit__(None, None, None)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = bytearray()
        too_large = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > MAX_BODY:
                too_large = True
            elif chunk:
                body += chunk
            if not message.get("more_body", False):
                break
        if too_large:
            response = error_response("too_large", f"Request body larger than {MAX_BODY} bytes")
        else:
            client = scope.get("client")
            request = HttpRequest(
                method=scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=bytes(body),
                peer=client[0] if client else "",
            )
            try:
                response = await self.gateway.handle(request)
            except Exception:
                log.exception("unexpected error handling %s %s", scope["method"], scope["path"])
                response = internal_error()
        await send_response(send, response, head=scope["method"] == "HEAD")


async def send_response(send: Send, response: HttpResponse, *, head: bool = False) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    raw.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else response.body})
