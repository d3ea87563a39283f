"""A fake EVM node's WebSocket: JSON-RPC calls, and ``newHeads`` subscriptions.

On the node's own port (as ganache and Erigon serve it): a ``GET`` that asks for an upgrade
becomes a socket on which each message is answered as the same call over HTTP would be, and
``eth_subscribe`` ``newHeads`` sends each new head of the node as it comes (a node held back,
``stalled_at`` or ``lag`` growing, sends none until it moves again). ``eth_unsubscribe``
stops one. A node that stops (:meth:`.FakeNode.stop`) drops its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from typing import Any, Protocol

import orjson
from aiohttp import WSMsgType, web

_ids = itertools.count(1)


class FakeNode(Protocol):
    """What of :class:`.node.FakeNode` its socket uses."""

    counts: Counter[str]
    behaviour: Any

    def head(self) -> int: ...
    def answer_member(self, member: Any) -> dict[str, Any]: ...


async def serve(node: FakeNode, request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    node.counts["<websocket>"] += 1
    heads: dict[str, asyncio.Task[None]] = {}
    try:
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                doc = orjson.loads(message.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict):
                answer: Any = [node.answer_member(m) for m in doc]
            else:
                answer = _call(node, socket, doc, heads)
            await socket.send_bytes(orjson.dumps(answer))
    finally:
        for task in heads.values():
            task.cancel()
    return socket


def _call(
    node: FakeNode,
    socket: web.WebSocketResponse,
    doc: dict[str, Any],
    heads: dict[str, asyncio.Task[None]],
) -> dict[str, Any]:
    method, ident, params = doc.get("method"), doc.get("id"), doc.get("params") or []
    if method == "eth_subscribe":
        node.counts["eth_subscribe"] += 1
        if params != ["newHeads"]:
            error = {"code": -32602, "message": f"the simulator does not serve {params}"}
            return {"jsonrpc": "2.0", "id": ident, "error": error}
        sub = hex(next(_ids))
        heads[sub] = asyncio.get_running_loop().create_task(_heads(node, socket, sub))
        return {"jsonrpc": "2.0", "id": ident, "result": sub}
    if method == "eth_unsubscribe":
        node.counts["eth_unsubscribe"] += 1
        task = heads.pop(str(params[0]) if params else "", None)
        if task is not None:
            task.cancel()
        return {"jsonrpc": "2.0", "id": ident, "result": task is not None}
    return node.answer_member(doc)


async def _heads(node: FakeNode, socket: web.WebSocketResponse, sub: str) -> None:
    """Each new head of the node, as it comes."""
    last = node.head()
    with contextlib.suppress(ConnectionError, RuntimeError):
        while not socket.closed:
            await asyncio.sleep(min(0.05, node.behaviour.block_interval / 4))
            head = node.head()
            for number in range(last + 1, head + 1):
                block = node.answer_member(
                    {"id": 0, "method": "eth_getBlockByNumber", "params": [hex(number), False]}
                )["result"]
                header = {k: v for k, v in block.items() if k != "transactions"}
                notice = {"subscription": sub, "result": header}
                await socket.send_bytes(
                    orjson.dumps({"jsonrpc": "2.0", "method": "eth_subscription", "params": notice})
                )
            last = max(last, head)
