"""Integrity before the cache keeps anything forever: an irreversible block is kept only when
it links to the blocks kept beside it (its ``previous`` is the id of the block before, its id
the ``previous`` of the block after); one that does not is not kept, and its node is
taken out of rotation."""

from __future__ import annotations

import time
from typing import Any

import orjson

from rpcbalancer.sim import Behaviour, chain_head

GET_BLOCK = "condenser_api.get_block"


async def test_a_block_that_does_not_link_is_not_kept_and_its_node_is_ejected(
    harness: Any,
) -> None:
    h = await harness(
        {"good": Behaviour(), "bad": Behaviour()},
        strategy="first",
        cache={"enabled": True},
        hedge={"enabled": False},
    )
    old = chain_head(time.time()) - 200  # irreversible long ago
    first = await h.call(GET_BLOCK, [old - 1])  # from "good": kept, with its id
    assert h.name_of(first) == "good"
    h.nodes["good"].set(fail_rate=1.0)  # the next block comes from "bad"
    h.nodes["bad"].set(corrupt_rate=1.0)
    served = await h.call(GET_BLOCK, [old])
    assert h.name_of(served) == "bad"
    assert orjson.loads(served.body)["result"]["previous"].endswith("deadbeef")
    cache = h.balancer.answer_cache
    assert cache.broken == 1
    bad = next(n for n in h.balancer.fleet.nodes if n.name == h.nodes["bad"].url)
    assert bad.breaker.ejected_by == {"integrity": 1}
    assert "ejected" in (h.balancer.fleet.exclusion(bad, time.monotonic()) or "")
    # Not kept: asked again, it is a miss, and "good" (back) gives the block that links.
    h.nodes["good"].set(fail_rate=0.0)
    again = await h.call(GET_BLOCK, [old])
    assert dict(again.headers).get("x-cache") == "miss"
    assert h.name_of(again) == "good"
    assert not orjson.loads(again.body)["result"]["previous"].endswith("deadbeef")
    kept = await h.call(GET_BLOCK, [old])
    assert dict(kept.headers).get("x-cache") == "hit"


async def test_blocks_that_link_are_kept_either_way_round(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, cache={"enabled": True})
    old = chain_head(time.time()) - 300
    for number in (old + 1, old, old - 1):  # each kept beside its neighbours
        await h.call(GET_BLOCK, [number])
    cache = h.balancer.answer_cache
    assert cache.broken == 0
    assert {old - 1, old, old + 1} <= set(cache.links)


async def test_an_evm_transaction_kept_forever_must_be_in_its_block(harness: Any) -> None:
    """A receipt is kept forever once found; before that, the block it names must be the
    block of that number kept (its hash), and hold it. A node whose receipt fails either is
    ejected, as one whose block does not link is."""
    h = await harness(
        {"good": Behaviour(), "bad": Behaviour()},
        chain="evm",
        strategy="first",
        cache={"enabled": True},
        hedge={"enabled": False},
    )
    old = h.nodes["good"].head() - 200  # finalized long ago
    tx = "0x" + "ab" * 32
    h.mempool.take("0x01", old, "good", tx)
    block = await h.call("eth_getBlockByNumber", [hex(old), False])
    assert orjson.loads(block.body)["result"]["transactions"] == [tx]
    cache = h.balancer.answer_cache
    assert old in cache.links and cache.holds[old] == {tx}
    h.nodes["good"].set(fail_rate=1.0)  # the receipt comes from "bad", naming another block
    h.nodes["bad"].set(corrupt_rate=1.0)
    served = await h.call("eth_getTransactionReceipt", [tx])
    assert h.name_of(served) == "bad"
    assert orjson.loads(served.body)["result"]["blockHash"].endswith("deadbeef")
    assert cache.broken == 1
    bad = next(n for n in h.balancer.fleet.nodes if n.name == h.nodes["bad"].url)
    assert bad.breaker.ejected_by == {"integrity": 1}
    h.nodes["good"].set(fail_rate=0.0)
    again = await h.call("eth_getTransactionReceipt", [tx])
    assert (dict(again.headers).get("x-cache"), h.name_of(again)) == ("miss", "good")
    kept = await h.call("eth_getTransactionReceipt", [tx])
    assert dict(kept.headers).get("x-cache") == "hit"
    # A transaction a node places in that block, which the block kept does not hold.
    other = "0x" + "cd" * 32
    h.mempool.take("0x02", old, "good", other)
    placed = await h.call("eth_getTransactionReceipt", [other])
    assert orjson.loads(placed.body)["result"]["blockNumber"] == hex(old)
    assert cache.broken == 2
    assert dict((await h.call("eth_getTransactionReceipt", [other])).headers)["x-cache"] == "miss"
