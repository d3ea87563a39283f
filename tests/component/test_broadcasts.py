"""Broadcasts that survive a dead node (``broadcast.resend``, ``broadcast.fanout``).

The fake nodes of a test share one mempool, as a real network does: a transaction is taken
once, and a node asked for one any node took answers as steemd does ("Duplicate transaction
check failed"). A node with ``broadcast_die_rate`` takes a new transaction and then dies on
the request, its connection dropped before it answers: the transaction is on the chain and
the client does not know it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from rpcbalancer.config import from_mapping
from rpcbalancer.errors import ConfigError
from rpcbalancer.sim import Behaviour

from ..unit.test_keccak import GANACHE_RAW

BROADCAST = "condenser_api.broadcast_transaction"
SYNCHRONOUS = "condenser_api.broadcast_transaction_synchronous"
FAST = {"per_try": 0.5, "total": 4}
GANACHE_HASH = "0x21a92f86e55759418db79dda96ddfdda5c4a2728adb240aff59e22c787428ffc"
"""The hash ganache gave the raw transaction of tests/unit/test_keccak.py."""


def transfer(n: int) -> dict[str, Any]:
    """A signed transfer (its signature makes it unique, as a real one's does)."""
    return {
        "ref_block_num": 1,
        "ref_block_prefix": 2,
        "expiration": "2030-01-01T00:00:00",
        "operations": [["transfer", {"from": "alice", "to": "bob", "amount": f"{n}.000 STEEM"}]],
        "signatures": [f"{n:0130x}"],
    }


def sent(h: Any) -> dict[str, int]:
    return {name: len(node.broadcasts) for name, node in h.nodes.items()}


async def test_a_node_that_takes_a_transaction_and_dies_costs_the_client_nothing(
    harness: Any,
) -> None:
    h = await harness(
        {"a": Behaviour(broadcast_die_rate=1.0), "b": Behaviour()},
        strategy="first",
        timeouts=FAST,
    )
    resp = await h.call(BROADCAST, [transfer(1)], ident=7)
    assert resp.status == 200
    assert orjson.loads(resp.body) == {"jsonrpc": "2.0", "result": {}, "id": 7}
    assert sent(h) == {"a": 1, "b": 1}
    assert len(h.mempool) == 1  # on the chain once: b refused it as a duplicate
    assert h.balancer.stats.resent == {"duplicate": 1}
    assert h.name_of(resp) == "b"


async def test_a_broadcast_that_timed_out_goes_to_another_node(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "b": Behaviour()}, strategy="first", timeouts=FAST)
    h.nodes["a"].set(hang_rate=1.0)  # it never reads the transaction: b takes it fresh
    resp = await h.call("call", ["network_broadcast_api", "broadcast_transaction", [transfer(2)]])
    assert resp.status == 200
    assert orjson.loads(resp.body)["result"] == {}
    assert sent(h) == {"a": 1, "b": 1}
    assert len(h.mempool) == 1
    assert h.balancer.stats.resent == {"ok": 1}


async def test_a_chain_error_is_the_answer_and_is_not_sent_again(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "b": Behaviour()}, strategy="first")
    first = await h.call(BROADCAST, [transfer(3)])
    assert first.status == 200
    again = await h.call(BROADCAST, [transfer(3)])  # the client sends it twice itself
    error = orjson.loads(again.body)["error"]
    assert "Duplicate transaction" in error["message"]  # passed on: not ours to judge
    assert sent(h) == {"a": 2, "b": 0}
    assert h.balancer.stats.resent == {}


@pytest.mark.parametrize("strategy", ["first", "round_robin", "fastest"])
async def test_every_broadcast_succeeds_once_when_a_node_dies_on_half_of_them(
    harness: Any, strategy: str
) -> None:
    """The issue's proof: 60 transfers, one node taking half of the broadcasts it gets and
    dying before it answers. ``first`` sends it all 60 and ``round_robin`` a third; ``fastest``
    shuns it after its first death (it may never pick it at all), so there the proof is
    only that every answer is right."""
    h = await harness(
        {
            "a": Behaviour(latency=0.001, broadcast_die_rate=0.5),
            "b": Behaviour(latency=0.003),
            "c": Behaviour(latency=0.005),
        },
        strategy=strategy,
        timeouts=FAST,
        circuit_breaker={"failures": 1000},  # a keeps getting its share
        outlier={"min_requests": 1000},
    )
    answers = []
    for n in range(60):
        resp = await h.call(BROADCAST, [transfer(100 + n)], ident=n)
        answers.append(orjson.loads(resp.body))
    assert [doc.get("result") for doc in answers] == [{}] * 60
    assert [doc["id"] for doc in answers] == list(range(60))
    assert len(h.mempool) == 60  # each transfer on the chain once
    assert all(count in (1, 2) for count in h.mempool.sent.values())
    resent = h.balancer.stats.resent
    if strategy != "fastest":
        assert resent.get("duplicate", 0) > 0
    assert sum(resent.values()) == sum(sent(h).values()) - 60


async def test_a_synchronous_broadcast_is_never_reported_done_unconfirmed(harness: Any) -> None:
    """``broadcast_transaction_synchronous`` answers once the transaction is in a block: a
    node's "already have it" confirms nothing, so the client gets that error, not success."""
    h = await harness(
        {"a": Behaviour(broadcast_die_rate=1.0), "b": Behaviour()},
        strategy="first",
        timeouts=FAST,
    )
    resp = await h.call(SYNCHRONOUS, [transfer(4)])
    doc = orjson.loads(resp.body)
    assert "result" not in doc
    assert "Duplicate transaction" in doc["error"]["message"]
    assert sent(h) == {"a": 1, "b": 1}
    # ...and one whose node never read it is confirmed by the next one.
    h.nodes["a"].set(broadcast_die_rate=0.0, hang_rate=1.0)
    resp = await h.call(SYNCHRONOUS, [transfer(5)])
    result = orjson.loads(resp.body)["result"]
    assert result["block_num"] > 0 and result["expired"] is False


async def test_fanout_sends_to_two_nodes_at_once_and_answers_once(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.2, broadcast_die_rate=1.0), "b": Behaviour(latency=0.01)},
        strategy="first",
        broadcast={"fanout": 2},
        timeouts={"per_try": 2, "total": 4},
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await h.call(BROADCAST, [transfer(6)], ident=3)
    took = loop.time() - started
    assert orjson.loads(resp.body) == {"jsonrpc": "2.0", "result": {}, "id": 3}
    assert sent(h) == {"a": 1, "b": 1}
    assert len(h.mempool) == 1
    assert took < 1.0  # b's answer, not a's per-try timeout (2 s)


def test_fanout_without_resend_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"broadcast\.fanout"):
        from_mapping({"broadcast": {"fanout": 2, "resend": False}}, env={})


async def test_an_evm_transaction_survives_its_node_dying(harness: Any) -> None:
    """eth_sendRawTransaction: the node takes it and dies; the next says "already known",
    which is answered as the node would have: the transaction's hash (Keccak-256 of it)."""
    h = await harness(
        {"a": Behaviour(broadcast_die_rate=1.0), "b": Behaviour()},
        chain="evm",
        strategy="first",
        timeouts=FAST,
    )
    raw = "0x" + GANACHE_RAW
    resp = await h.call("eth_sendRawTransaction", [raw], ident=11)
    assert orjson.loads(resp.body) == {"jsonrpc": "2.0", "result": GANACHE_HASH, "id": 11}
    assert h.nodes["a"].counts["eth_sendRawTransaction"] == 1
    assert h.nodes["b"].counts["eth_sendRawTransaction"] == 1
    assert h.mempool.transactions.keys() == {GANACHE_HASH}
    assert h.balancer.stats.resent == {"duplicate": 1}


@pytest.mark.parametrize("mined", [False, True])
async def test_an_evm_transaction_mined_before_the_resend_is_found_by_its_hash(
    harness: Any, mined: bool
) -> None:
    """The node that took it (3 blocks behind) dies; the next (at the head) has it in a
    block already and says "nonce too low", as geth does: the balancer looks the
    transaction up by its hash, finds it, and answers the hash. A "nonce too low" for
    another transaction (it is not on the chain) stands."""
    h = await harness(
        {"a": Behaviour(broadcast_die_rate=1.0, lag=3), "b": Behaviour()},
        chain="evm",
        strategy="first",
        timeouts=FAST,
        max_block_lag=10,
    )
    raw = "0x" + GANACHE_RAW
    if not mined:  # the chain has another transaction with its nonce: not this one
        h.nodes["a"].set(broadcast_die_rate=0.0, fail_methods="eth_sendRawTransaction")
        h.mempool.replaced.add(raw)
    resp = await h.call("eth_sendRawTransaction", [raw], ident=12)
    doc = orjson.loads(resp.body)
    if mined:
        assert doc == {"jsonrpc": "2.0", "result": GANACHE_HASH, "id": 12}
        assert sum(n.counts["eth_getTransactionByHash"] for n in h.nodes.values()) >= 1
        assert h.balancer.stats.resent == {"duplicate": 1}
    else:
        assert doc["id"] == 12 and "nonce too low" in doc["error"]["message"]
        assert sum(n.counts["eth_getTransactionByHash"] for n in h.nodes.values()) >= 1
        assert GANACHE_HASH not in h.mempool.transactions


async def test_a_transaction_the_node_signs_is_never_sent_twice(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()}, chain="evm", strategy="first", timeouts=FAST
    )
    h.nodes["a"].set(hang_rate=1.0)
    resp = await h.call("eth_sendTransaction", [{"to": "0x" + "00" * 20}])
    assert resp.status == 504
    assert (
        h.nodes["a"].counts["eth_sendTransaction"],
        h.nodes["b"].counts["eth_sendTransaction"],
    ) == (1, 0)
