from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpcbalancer.balancer import Balancer
from rpcbalancer.config import from_mapping
from rpcbalancer.fleet.nodes import Node
from rpcbalancer.proxy.gateway import Gateway, HttpRequest, HttpResponse
from rpcbalancer.sim import Behaviour, FakeNode, Mempool

from ..services import empty_postgres


class Harness:
    """A balancer (in this loop) in front of fake nodes (in this loop too)."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack
        self.nodes: dict[str, FakeNode] = {}
        self.balancer: Balancer | None = None
        self.gateway: Gateway | None = None
        self.mempool = Mempool()
        """The transactions the nodes took, shared as on a real network."""

    async def start(
        self,
        behaviours: dict[str, Behaviour],
        extra: dict[str, tuple[str, Behaviour]] | None = None,
        translate: bool = False,
        **config: Any,
    ) -> Harness:
        """``behaviours`` are the nodes (group ``default``); ``extra`` are more nodes, of a
        kind of their own (``hivemind``), named in ``config`` by their names in place of
        URLs; ``translate``: the default group translates legacy calls to appbase."""
        chain = config.get("chain", "steem")
        kinds = {name: (chain, b) for name, b in behaviours.items()} | (extra or {})
        for i, (name, (kind, behaviour)) in enumerate(kinds.items()):
            node = FakeNode(name, behaviour, seed=i, chain=kind, mempool=self.mempool)
            await node.start()
            self.stack.push_async_callback(node.stop)
            self.nodes[name] = node
        # Health stays in memory unless a test brings a store of its own; the answer cache
        # (on by default) stays off unless a test is about it: routing tests count what
        # reaches the nodes.
        data: dict[str, Any] = {
            "nodes": [self.nodes[name].url for name in behaviours],
            "store": "none",
            "cache": {"enabled": False},
            **config,
        }
        if translate:
            default = {"nodes": data.pop("nodes"), "translate_to_appbase": True}
            data["upstreams"] = {"default": default, **data.get("upstreams", {})}
        text = orjson.dumps(data)
        for name in extra or {}:
            text = text.replace(b'"%s"' % name.encode(), b'"%s"' % self.nodes[name].url.encode())
        balancer = Balancer(from_mapping(orjson.loads(text), env={}), rng=random.Random(3))
        self.balancer = await self.stack.enter_async_context(balancer)
        self.gateway = Gateway(balancer)
        return self

    def node(self, name: str) -> Node:
        """The balancer's node for the fake node ``name``."""
        assert self.balancer is not None
        url = self.nodes[name].url
        return next(n for n in self.balancer.fleet.nodes if n.name == url)

    def name_of(self, response: HttpResponse) -> str:
        served = dict(response.headers)["x-rpc-node"]
        return next(n for n, node in self.nodes.items() if node.url == served)

    async def post(
        self, body: bytes, peer: str = "127.0.0.1", headers: dict[str, str] | None = None
    ) -> HttpResponse:
        assert self.gateway is not None
        return await self.gateway.handle(
            HttpRequest("POST", "/", body=body, peer=peer, headers=headers or {})
        )

    async def call(self, method: str, params: Any = None, ident: Any = 1) -> HttpResponse:
        import orjson

        return await self.post(
            orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params or [], "id": ident})
        )


@pytest.fixture(params=["sqlite", "redis", "postgres", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty health store of each backend (the servers are the run's own)."""
    token = uuid.uuid4().hex[:8]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/health.db"
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix=t{token}"
    if request.param == "dynamodb":
        endpoint = request.getfixturevalue("dynamodb_endpoint")
        return f"dynamodb://t{token}?region=us-east-1&endpoint={endpoint}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(empty_postgres(url))  # its tables are shared by the whole run
    return url


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:

        async def make(behaviours: dict[str, Behaviour], **config: Any) -> Harness:
            return await Harness(stack).start(behaviours, **config)

        yield make
