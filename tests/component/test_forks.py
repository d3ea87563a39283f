"""Fork choice through the gateway (fleet/forks.py, the probe loop's asks): a simulated node on
a fork of its own for its latest blocks is excluded as soon as a probe round shows its head's
id is not the majority's, serves nothing meanwhile, and is back when it converges."""

from __future__ import annotations

import time
from typing import Any

import orjson

from rpcbalancer.observe.views import status_doc
from rpcbalancer.sim import Behaviour, chain_head

GET_BLOCK = "condenser_api.get_block"


async def test_a_node_on_a_fork_is_excluded_until_it_converges(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.002), "b": Behaviour(latency=0.002), "f": Behaviour()},
        strategy="round_robin",
        hedge={"enabled": False},
    )
    forked = h.node("f")
    await h.balancer.prober.round()
    assert forked.forked is None
    h.nodes["f"].set(fork=3)  # its latest 3 blocks are other blocks than the chain's
    await h.balancer.prober.round()
    assert forked.forked is not None and "on a fork" in forked.forked
    excluded = h.balancer.fleet.excluded(forked, time.monotonic())
    assert excluded is not None and excluded.kind == "forked"
    (shown,) = [n for n in status_doc(h.balancer)["nodes"] if n["name"] == forked.name]
    assert shown["state"] == "excluded" and "on a fork" in shown["reason"]
    served = set()
    head = chain_head(time.time())
    for i in range(12):
        resp = await h.call(GET_BLOCK, [head - (i % 3)], ident=i)
        block = orjson.loads(resp.body)["result"]
        assert block is None or block["block_id"].endswith("0" * 32)  # never the fork's
        served.add(h.name_of(resp))
    assert served == {"a", "b"}
    assert h.nodes["f"].counts.get(GET_BLOCK, 0) == 0
    h.nodes["f"].set(fork=0)  # it reorganises onto the chain
    await h.balancer.prober.round()
    assert forked.forked is None
    assert h.balancer.fleet.excluded(forked, time.monotonic()) is None
    assert h.balancer.fleet.forks_found == 1


async def test_two_nodes_that_disagree_are_both_kept(harness: Any) -> None:
    """One against one: no majority says which chain is right, so neither is excluded."""
    h = await harness({"a": Behaviour(), "f": Behaviour(fork=2)})
    await h.balancer.prober.round()
    assert [n.forked for n in h.balancer.fleet.nodes] == [None, None]


async def test_fork_choice_turned_off_compares_nothing(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour(), "f": Behaviour(fork=2)},
        consistency={"fork_choice": False},
    )
    await h.balancer.prober.round()
    assert [n.forked for n in h.balancer.fleet.nodes] == [None, None, None]
    assert h.balancer.fleet.forks_found == 0


async def test_a_node_behind_on_a_fork_is_judged_by_the_blocks_asked_of_the_others(
    harness: Any,
) -> None:
    """Two blocks behind (within the lag rule), its head is a block nobody else reported: the
    round asks the nodes past it for that block (the next header's ``previous``)."""
    h = await harness(
        {"a": Behaviour(), "b": Behaviour(), "f": Behaviour(lag=2, fork=1)},
        hedge={"enabled": False},
    )
    await h.balancer.prober.round()
    forked = h.node("f")
    assert forked.forked is not None and "on a fork" in forked.forked
    asked = h.nodes["a"].counts.get("condenser_api.get_block_header", 0)
    asked += h.nodes["b"].counts.get("condenser_api.get_block_header", 0)
    assert asked >= 2
    h.nodes["f"].set(fork=0)
    await h.balancer.prober.round()
    assert forked.forked is None  # on the chain again: back
