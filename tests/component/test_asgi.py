"""The ASGI app (the adapter Lambda and embedders use), driven in memory."""

from __future__ import annotations

from typing import Any

import orjson

from rpcbalancer.app import App
from rpcbalancer.config import from_mapping
from rpcbalancer.sim import FakeNode


async def asgi_call(
    app: App, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:], "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("192.0.2.5", 4000),
    }
    await app(scope, receive, send)
    start, body_msg = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body_msg["body"]


async def test_asgi_app_serves_through_its_lifespan() -> None:
    node = FakeNode("a")
    await node.start()
    try:
        app = App(from_mapping({"nodes": [node.url], "store": "none"}, env={}))
        lifespan = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        replies: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return lifespan.pop(0)

        async def send(message: dict[str, Any]) -> None:
            replies.append(message)
            if message["type"] == "lifespan.startup.complete":
                status, headers, body = await asgi_call(
                    app,
                    "POST",
                    "/",
                    orjson.dumps(
                        {"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": 8}
                    ),
                )
                assert status == 200 and headers["x-rpc-node"] == node.url
                assert orjson.loads(body)["id"] == 8
                status, headers, body = await asgi_call(app, "HEAD", "/health")
                assert status == 200 and body == b"" and int(headers["content-length"]) > 0

        await app({"type": "lifespan"}, receive, send)
        assert [r["type"] for r in replies] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
    finally:
        await node.stop()
