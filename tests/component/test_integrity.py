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
