"""A subscription topic's delivery (proxy/topics.py): each head and log once, in order, a
reorganisation as the node delivers it, gaps filled by number from the node carrying it. The
node here is a small stand-in that answers ``eth_getBlockByNumber`` and ``eth_getLogs`` from
a table (the whole path through real nodes is in tests/component/test_subscriptions.py and
tests/integration/test_websocket.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from rpcbalancer.errors import UpstreamError
from rpcbalancer.proxy.topics import Carrier, Topic


class Hub:
    def __init__(self, max_gap: int = 128) -> None:
        self.timeout = 1.0
        self.max_gap = max_gap
        self.counts: dict[str, int] = {}
        self.moved: list[str] = []

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def move(self, topic: Topic, reason: str) -> None:
        self.moved.append(reason)


class Node:
    """Answers calls from its tables; records them."""

    def __init__(self, blocks: dict[int, dict[str, Any]], logs: list[dict[str, Any]]) -> None:
        self.blocks, self.logs = blocks, logs
        self.calls: list[tuple[str, list[Any]]] = []
        self.broken = False
        self.reason = None

    def call(self, method: str, params: list[Any]) -> asyncio.Future[Any]:
        self.calls.append((method, params))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(UpstreamError("n", "connection lost"))
        elif method == "eth_getBlockByNumber":
            future.set_result(self.blocks.get(int(params[0], 16)))
        else:
            future.set_result(self.logs)
        return future


class Client:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def notify(self, subscription: str, result: bytes) -> None:
        self.got.append(orjson.loads(result))


def block(number: int, fork: str = "") -> dict[str, Any]:
    return {
        "number": hex(number),
        "hash": f"0x{fork}{number:04x}",
        "parentHash": f"0x{fork}{number - 1:04x}",
        "transactions": ["0xaa"],
        "size": "0x10",
    }


def header(number: int, fork: str = "") -> dict[str, Any]:
    made = block(number, fork)
    del made["transactions"], made["size"]
    return made


async def run(topic: Topic, *items: tuple[str, Any]) -> None:
    worker = asyncio.get_running_loop().create_task(topic.run())
    for item in items:
        topic.feed(*item)
    for _ in range(50):
        await asyncio.sleep(0)
    worker.cancel()


def made(kind: str, node: Node, hub: Hub, params: list[Any] | None = None) -> Topic:
    topic = Topic(hub, "default", kind, params or [kind])
    topic.carrier = Carrier(SimpleNamespace(name="n"), node, lambda: 0.0)  # type: ignore[arg-type]
    return topic


async def test_heads_once_in_order_a_reorganisation_as_it_comes_a_gap_filled() -> None:
    node = Node({n: block(n) for n in range(1, 10)}, [])
    hub = Hub()
    topic = made("newHeads", node, hub)
    client = Client()
    topic.clients["0x1"] = client
    await run(
        topic,
        ("item", header(1)), ("item", header(2)), ("item", header(3)),
        ("item", header(3)),  # the overlap of a switch: dropped
        ("item", header(3, "f")),  # the same height, another hash: a reorganisation
        ("item", header(6)),  # 4 and 5 were missed: fetched first
        ("item", header(2)),  # an old head again: dropped
    )  # fmt: skip
    assert [h["hash"] for h in client.got] == [
        "0x0001", "0x0002", "0x0003", "0xf0003", "0x0004", "0x0005", "0x0006",
    ]  # fmt: skip
    assert all("transactions" not in h and "size" not in h for h in client.got)
    assert [p[0] for _, p in node.calls] == ["0x4", "0x5"]
    assert hub.counts["filled_heads"] == 2


async def test_a_gap_longer_than_max_gap_keeps_its_latest_blocks() -> None:
    node = Node({n: block(n) for n in range(1, 300)}, [])
    topic = made("newHeads", node, Hub(max_gap=5))
    client = Client()
    topic.clients["0x1"] = client
    await run(topic, ("item", header(10)), ("item", header(200)))
    assert [int(h["number"], 16) for h in client.got] == [10, 195, 196, 197, 198, 199, 200]


async def test_a_switch_fills_up_to_the_new_nodes_head() -> None:
    node = Node({n: block(n) for n in range(1, 10)}, [])
    topic = made("newHeads", node, Hub())
    client = Client()
    topic.clients["0x1"] = client
    await run(topic, ("item", header(4)), ("fill", (None, 7)), ("item", header(7)))
    assert [int(h["number"], 16) for h in client.got] == [4, 5, 6, 7]


async def test_logs_once_removed_ones_too_and_a_moved_topic_asks_for_what_it_missed() -> None:
    first = {"blockHash": "0x01", "logIndex": "0x0", "blockNumber": "0x3", "data": "0x"}
    second = {"blockHash": "0x02", "logIndex": "0x0", "blockNumber": "0x5", "data": "0x"}
    node = Node({}, [first, second])
    hub = Hub()
    topic = made("logs", node, hub, ["logs", {"topics": ["0x11"]}])
    client = Client()
    topic.clients["0x1"] = client
    await run(
        topic,
        ("item", first), ("item", first),
        ("item", {**first, "removed": True}),  # a reorganisation took it back
        ("fill", (2, 6)),
    )  # fmt: skip
    assert client.got == [first, {**first, "removed": True}, second]
    assert node.calls == [
        ("eth_getLogs", [{"topics": ["0x11"], "fromBlock": "0x2", "toBlock": "0x6"}])
    ]
    assert hub.counts["filled_logs"] == 1


async def test_a_fill_that_fails_moves_the_topic() -> None:
    node = Node({}, [])
    node.broken = True
    hub = Hub()
    topic = made("newHeads", node, hub)
    topic.clients["0x1"] = Client()
    await run(topic, ("item", header(1)), ("item", header(4)))
    assert hub.moved == ["fill failed: connection lost"]


@pytest.mark.parametrize("item", ["0xab", {"hash": "0xab", "nonce": "0x1"}])
async def test_pending_transactions_once(item: Any) -> None:
    topic = made("newPendingTransactions", Node({}, []), Hub())
    client = Client()
    topic.clients["0x1"] = client
    await run(topic, ("item", item), ("item", item))
    assert client.got == [item]
