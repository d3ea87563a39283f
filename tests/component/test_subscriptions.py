"""EVM subscriptions in one process (proxy/subscriptions.py, proxy/topics.py): the server in
this process, simulated EVM nodes that serve ``newHeads`` on their WebSocket (sim/websocket.py),
the ``websockets`` library as the client. A node dies, another stalls: the heads go on,
each once and in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from rpcbalancer.config import Config, from_mapping
from rpcbalancer.hosts.standalone import serve_async
from rpcbalancer.sim import Behaviour, FakeNode

from ..conftest import free_port

INTERVAL = 0.2
"""Seconds between the simulated chain's blocks."""


@pytest.fixture
async def nodes() -> AsyncIterator[list[FakeNode]]:
    made = [
        FakeNode(name, Behaviour(latency=0.001, block_interval=INTERVAL), chain="evm", seed=i)
        for i, name in enumerate("abc")
    ]
    for node in made:
        await node.start()
    yield made
    for node in made:
        await node.stop()


def config(nodes: list[FakeNode], **more: Any) -> Config:
    return from_mapping(spec(nodes, **more), env={})


def spec(nodes: list[FakeNode], **more: Any) -> dict[str, Any]:
    return {
        "chain": "evm",
        "nodes": [{"url": node.url, "name": node.name} for node in nodes],
        "store": "none",
        "probe": {"interval": 0.2},
        "listen": {"port": free_port()},
        "websocket": {"silent_after": 0.8},
        **more,
    }


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[str]:
    stop = asyncio.Event()
    server = asyncio.create_task(serve_async(config, stop=stop))
    base = f"http://127.0.0.1:{config.listen.port}"
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(base + "/version") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.05)
    try:
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


async def status(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client, client.get(base + "/status.json") as resp:
        doc = await resp.json()
    return dict(doc["balancer"]["websocket"])


async def carrier(base: str) -> str:
    nodes = {topic["node"] for topic in (await status(base))["topics"]}
    assert len(nodes) == 1 and None not in nodes, nodes
    return str(nodes.pop())


async def subscribe(ws: ClientConnection, params: list[Any]) -> str:
    await ws.send(
        orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": params}
        ).decode()
    )
    answer = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert "result" in answer, answer
    return str(answer["result"])


async def read_heads(ws: ClientConnection, into: list[tuple[int, str, str]]) -> None:
    async for message in ws:
        doc = orjson.loads(message)
        head = doc["params"]["result"]
        into.append((int(head["number"], 16), head["hash"], head["parentHash"]))


async def test_heads_go_on_across_a_dead_node_and_a_stalled_one(nodes: list[FakeNode]) -> None:
    by_name = {node.name: node for node in nodes}
    async with serving(config(nodes)) as base, connect(base.replace("http", "ws")) as ws:
        await subscribe(ws, ["newHeads"])
        heads: list[tuple[int, str, str]] = []
        reader = asyncio.create_task(read_heads(ws, heads))
        await asyncio.sleep(1.0)
        dead = by_name[await carrier(base)]
        await dead.stop()
        await asyncio.sleep(1.5)
        stalled = by_name[await carrier(base)]
        assert stalled is not dead
        stalled.set(stalled_at=stalled.head())
        await asyncio.sleep(2.5)
        stalled.set(stalled_at=0)
        await asyncio.sleep(0.5)
        reader.cancel()
        counts = await status(base)
    numbers = [number for number, _, _ in heads]
    assert len(numbers) >= 15, numbers
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    for (_, before, _), (_, _, parent) in itertools.pairwise(heads):
        assert parent == before
    assert counts["switches"] >= 2, counts
    assert counts["filled_heads"] >= 1, counts  # the stalled node's missed heads, by number


async def test_a_node_without_websocket_is_passed_over(nodes: list[FakeNode]) -> None:
    """A node whose ``ws_url`` answers no WebSocket (here a closed port) is skipped for a
    while; the subscription goes to the next one (behind by a block: asked second)."""
    nodes[1].set(lag=1)
    mapping = spec(nodes[:2])
    mapping["nodes"][0]["ws_url"] = f"ws://127.0.0.1:{free_port()}"
    async with (
        serving(from_mapping(mapping, env={})) as base,
        connect(base.replace("http", "ws")) as ws,
    ):
        await subscribe(ws, ["newHeads"])
        assert await carrier(base) == "b"
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["method"] == "eth_subscription"


async def test_unsubscribing_the_last_client_ends_the_upstream_subscription(
    nodes: list[FakeNode],
) -> None:
    async with serving(config(nodes)) as base:
        async with connect(base.replace("http", "ws")) as ws:
            sub = await subscribe(ws, ["newHeads"])
            name = await carrier(base)
            node = next(n for n in nodes if n.name == name)
            await ws.send(
                orjson.dumps(
                    {"jsonrpc": "2.0", "id": 2, "method": "eth_unsubscribe", "params": [sub]}
                ).decode()
            )
            while (answer := orjson.loads(await asyncio.wait_for(ws.recv(), 5))).get("id") != 2:
                pass
            assert answer["result"] is True
            assert (await status(base))["topics"] == []
        assert node.counts["<websocket>"] == 1  # one socket to the node, closed with the topic
