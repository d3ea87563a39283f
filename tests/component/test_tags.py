"""EVM block tags resolved to numbers (proxy/heads.py: ``HeadFloor.resolve``).

Real fake EVM nodes on loopback at different heights, all within the lag rule. The simulator
answers a read of state at a block (``eth_getBalance``, ``eth_call``, ``eth_getTransactionCount``)
with ``block x STATE_PER_BLOCK``, so the block each answer was read at shows, as the state of a
growing chain would; a block a node does not have yet is geth's "header not found". The nodes
drift as nodes do: one stalls (its head stays while the chain moves on), then catches up.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import orjson
import pytest

from rpcbalancer.sim import Behaviour
from rpcbalancer.sim.node import STATE_PER_BLOCK, chain_head

INTERVAL = 0.2
ACCOUNT = "0x" + "ab" * 20


def fleet() -> dict[str, Behaviour]:
    return {
        "a": Behaviour(latency=0.004, block_interval=INTERVAL),
        "b": Behaviour(latency=0.002, lag=3, block_interval=INTERVAL),
        "c": Behaviour(latency=0.001, lag=6, block_interval=INTERVAL),
    }


class Drift:
    """Nodes drift as nodes do, each 0-6 blocks behind: one stalls (its head stays while the
    chain moves on), then catches up; no node's own head ever goes back."""

    def __init__(self, h: Any, seed: int) -> None:
        self.h = h
        self.rng = random.Random(seed)

    async def run(self, readers: Any) -> Any:
        """``readers`` (gathered) while the nodes drift under them."""
        task = asyncio.ensure_future(readers)
        while not task.done():
            await self.step()
        return task.result()

    async def step(self) -> None:
        await asyncio.sleep(INTERVAL)
        for node in self.h.nodes.values():
            head = node.head()
            behind = chain_head(time.time(), INTERVAL) - head
            if node.behaviour.stalled_at and (behind >= 6 or self.rng.random() < 0.4):
                node.set(stalled_at=0, lag=self.rng.randint(0, behind))  # catches up
            elif not node.behaviour.stalled_at and self.rng.random() < 0.5:
                node.set(stalled_at=head)


def read_at(body: bytes) -> int:
    doc = orjson.loads(body)
    assert "result" in doc, doc
    return int(doc["result"], 16) // STATE_PER_BLOCK


async def reader(h: Any, calls: int, seed: int) -> list[int]:
    """The blocks one client's reads were answered at, ``latest`` spelled three ways, with
    ``eth_blockNumber`` polled between them as a dapp does."""
    rng = random.Random(seed)
    seen = []
    for i in range(calls):
        await asyncio.sleep(0.02)
        kind = rng.randrange(4)
        if kind == 0:
            resp = await h.call("eth_getBalance", [ACCOUNT, "latest"], ident=i)
        elif kind == 1:
            resp = await h.call("eth_call", [{"to": ACCOUNT, "data": "0x"}], ident=i)
        elif kind == 2:
            resp = await h.call("eth_getTransactionCount", [ACCOUNT, "latest"], ident=i)
        else:
            resp = await h.call("eth_blockNumber", ident=i)
            assert resp.status == 200, resp.body
            seen.append(int(orjson.loads(resp.body)["result"], 16))
            continue
        assert resp.status == 200, resp.body
        seen.append(read_at(resp.body))
    return seen


def went_back(seen: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(seen) if after < before)


@pytest.mark.parametrize("strategy", ["fastest", "round_robin", "random"])
async def test_reads_at_latest_never_go_back(harness: Any, strategy: str) -> None:
    h = await harness(fleet(), chain="evm", strategy=strategy, hedge={"enabled": False})
    drift = Drift(h, 7)
    seen = await drift.run(asyncio.gather(*(reader(h, 120, seed) for seed in range(3))))
    assert [went_back(s) for s in seen] == [0, 0, 0]
    # ... and not because they were stuck: the chain moved under them.
    assert all(s[-1] - s[0] >= 5 for s in seen), [(s[0], s[-1]) for s in seen]


async def test_without_the_floor_reads_at_latest_go_back(harness: Any) -> None:
    h = await harness(
        fleet(),
        chain="evm",
        strategy="round_robin",
        hedge={"enabled": False},
        consistency={"monotonic_head": False},
    )
    drift = Drift(h, 7)
    seen = await drift.run(asyncio.gather(*(reader(h, 120, seed) for seed in range(3))))
    assert sum(went_back(s) for s in seen) > 0


async def test_a_tag_goes_to_a_node_that_has_its_block(harness: Any) -> None:
    """A client was told the head by ``a``; ``b`` is 5 blocks behind: reads at ``latest`` go
    to ``a`` alone, sent with the number (``a``'s answers show that block, not a later one),
    while ``b`` still serves the blocks it has."""
    h = await harness(
        {"a": Behaviour(block_interval=5.0), "b": Behaviour(lag=5, block_interval=5.0)},
        chain="evm",
        strategy="round_robin",
        hedge={"enabled": False},
        probe={"interval": 3600},
    )
    told = [await h.call("eth_blockNumber", ident=i) for i in range(2)]
    top = max(int(orjson.loads(resp.body)["result"], 16) for resp in told)
    assert top == h.nodes["a"].head()
    for i in range(10):
        resp = await h.call("eth_getBalance", [ACCOUNT, "latest"], ident=i)
        assert (h.name_of(resp), read_at(resp.body)) == ("a", top)
    older = [await h.call("eth_getBalance", [ACCOUNT, hex(top - 10)]) for _ in range(4)]
    assert {h.name_of(resp) for resp in older} == {"a", "b"}
    assert {read_at(resp.body) for resp in older} == {top - 10}


async def test_finalized_and_safe_are_numbers_every_node_has(harness: Any) -> None:
    h = await harness(fleet(), chain="evm", strategy="round_robin", hedge={"enabled": False})
    drift = Drift(h, 3)
    seen = []
    for i in range(60):
        if i % 6 == 0:
            await drift.step()
        tag = "finalized" if i % 2 else "safe"
        resp = await h.call("eth_getBalance", [ACCOUNT, tag], ident=i)
        seen.append(read_at(resp.body))
    assert went_back(seen) == 0
    floor = h.balancer.groups["default"].heads
    assert floor.final == seen[-1]
    # A finalized block (the simulator's is 64 behind its head) every node reported.
    assert seen[-1] <= min(node.head() for node in h.nodes.values()) - 64 + 6


async def test_block_number_never_below_a_block_an_answer_showed(harness: Any) -> None:
    """A client is shown block N (here by ``eth_getBlockByNumber``; on a real chain a receipt
    does it too); ``eth_blockNumber`` from a node behind it then says N, not less."""
    h = await harness(
        {
            "a": Behaviour(latency=0.02, block_interval=5.0),
            "b": Behaviour(lag=4, block_interval=5.0),
        },
        chain="evm",
        strategy="first",
        hedge={"enabled": False},
        probe={"interval": 3600},
    )
    top = h.nodes["a"].head()
    shown = await h.call("eth_getBlockByNumber", [hex(top), False])
    assert orjson.loads(shown.body)["result"]["number"] == hex(top)
    await h.nodes["a"].stop()
    resp = await h.call("eth_blockNumber", ident=5)
    doc = orjson.loads(resp.body)
    assert (doc["result"], doc["id"]) == (hex(top), 5)


@pytest.mark.parametrize("monotonic", [True, False])
async def test_batch_members_read_at_the_block_their_batch_was_told(
    harness: Any, monotonic: bool
) -> None:
    h = await harness(
        fleet(),
        chain="evm",
        strategy="round_robin",
        hedge={"enabled": False},
        consistency={"monotonic_head": monotonic},
    )
    drift = Drift(h, 11)
    seen = []
    for i in range(90):
        if i % 5 == 0:
            await drift.step()
        batch = [
            {"jsonrpc": "2.0", "method": "eth_blockNumber", "params": [], "id": 1},
            {"jsonrpc": "2.0", "method": "eth_getBalance", "params": [ACCOUNT], "id": 2},
            {"jsonrpc": "2.0", "method": "eth_chainId", "params": [], "id": 3},
        ]
        answers = orjson.loads((await h.post(orjson.dumps(batch))).body)
        assert [a["id"] for a in answers] == [1, 2, 3]
        seen += [int(answers[0]["result"], 16), read_at(orjson.dumps(answers[1]))]
    if monotonic:
        assert went_back(seen[1::2]) == 0
    else:
        assert went_back(seen[1::2]) > 0
