"""Quorum reads (a route's ``quorum: {ask, agree}``, proxy/quorum.py): several nodes asked,
the answer enough of them agree on, the node that disagreed taken out of rotation."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from rpcbalancer.config import from_mapping
from rpcbalancer.errors import ConfigError
from rpcbalancer.sim import Behaviour, chain_head

GET_BLOCK = "condenser_api.get_block"
ROUTE = {"appbase.condenser_api.get_block": {"quorum": {"ask": 3, "agree": 2}}}


async def test_the_answer_two_of_three_agree_on_wins_and_the_liar_is_ejected(
    harness: Any,
) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour(), "liar": Behaviour(corrupt_rate=1.0, latency=0.0)},
        routes=ROUTE,
        hedge={"enabled": False},
    )
    old = chain_head(time.time()) - 100
    for i in range(4):
        resp = await h.call(GET_BLOCK, [old + i], ident=i)
        doc = orjson.loads(resp.body)
        assert doc["id"] == i
        assert not doc["result"]["previous"].endswith("deadbeef")  # the liar's never wins
        assert h.name_of(resp) in ("a", "b")
    assert h.node("liar").breaker.ejected_by == {"quorum": 1}  # then out of rotation
    assert h.nodes["liar"].counts[GET_BLOCK] == 1
    assert h.nodes["a"].counts[GET_BLOCK] >= 4 and h.nodes["b"].counts[GET_BLOCK] >= 4
    assert h.node("a").breaker.ejected_by == {}


async def test_without_agreement_the_client_is_told_the_nodes_disagree(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "liar": Behaviour(corrupt_rate=1.0)},
        routes={"appbase.condenser_api.get_block": {"quorum": {"ask": 2, "agree": 2}}},
        hedge={"enabled": False},
    )
    resp = await h.call(GET_BLOCK, [chain_head(time.time()) - 100], ident=5)
    assert resp.status == 502
    doc = orjson.loads(resp.body)
    assert doc["id"] == 5 and "disagree" in doc["error"]["message"]


async def test_nodes_that_agree_on_an_error_give_that_error(harness: Any) -> None:
    h = await harness(
        {n: Behaviour() for n in "abc"},
        routes={"appbase.condenser_api": {"quorum": {"ask": 3, "agree": 2}}},
    )
    resp = await h.call("condenser_api.no_such_method", [])
    assert orjson.loads(resp.body)["error"]["code"] == -32601  # as the nodes said
    assert sum(node.counts["condenser_api.no_such_method"] for node in h.nodes.values()) >= 2


async def test_a_broadcast_under_a_quorum_route_goes_to_one_node(harness: Any) -> None:
    h = await harness(
        {n: Behaviour() for n in "abc"},
        routes={"appbase.condenser_api": {"quorum": {"ask": 3, "agree": 2}}},
    )
    resp = await h.call("condenser_api.broadcast_transaction", [{"signatures": ["01"]}])
    assert orjson.loads(resp.body)["result"] == {}
    assert sum(len(node.broadcasts) for node in h.nodes.values()) == 1


def test_agree_above_ask_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"quorum\.agree \(3\) is more than quorum\.ask \(2\)"):
        from_mapping({"routes": {"bridge": {"quorum": {"ask": 2, "agree": 3}}}}, env={})
