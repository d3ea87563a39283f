"""Read-your-writes (``consistency.read_your_writes``, proxy/writes.py): a client that
broadcasts a transfer and reads its balance and its account history at once sees the
transfer, whichever node the strategy would pick and whatever the cache holds.

The fake nodes share a mempool: the node that takes a transfer shows it in its accounts at
once; the others once their head reaches the block it went into (here they lag 4 blocks of
3 seconds, all within the lag rule).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from rpcbalancer.sim import Behaviour

ACCOUNTS = "condenser_api.get_accounts"
BROADCAST = "condenser_api.broadcast_transaction"
HISTORY = "condenser_api.get_account_history"


def fleet() -> dict[str, Behaviour]:
    return {
        "a": Behaviour(latency=0.004),
        "b": Behaviour(latency=0.001, lag=4),
        "c": Behaviour(latency=0.002, lag=4),
    }


def transfer(n: int, sender: str = "alice", receiver: str = "bob") -> dict[str, Any]:
    amount = "1.000 STEEM"
    return {
        "ref_block_num": 1,
        "ref_block_prefix": 2,
        "expiration": "2030-01-01T00:00:00",
        "operations": [["transfer", {"from": sender, "to": receiver, "amount": amount}]],
        "signatures": [f"{n:0130x}"],
    }


async def balance(h: Any, name: str, peer: str = "10.0.0.1") -> float:
    body = orjson.dumps({"jsonrpc": "2.0", "method": ACCOUNTS, "params": [[name]], "id": 1})
    resp = await h.post(body, peer=peer)
    assert resp.status == 200, resp.body
    return float(orjson.loads(resp.body)["result"][0]["balance"].split()[0])


async def send(h: Any, n: int, peer: str = "10.0.0.1") -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "method": BROADCAST, "params": [transfer(n)], "id": n})
    resp = await h.post(body, peer=peer)
    assert orjson.loads(resp.body)["result"] == {}


async def history(h: Any, name: str, peer: str = "10.0.0.1") -> list[str]:
    """The transactions in ``name``'s account history."""
    body = orjson.dumps({"jsonrpc": "2.0", "method": HISTORY, "params": [name, -1, 1000], "id": 1})
    resp = await h.post(body, peer=peer)
    assert resp.status == 200, resp.body
    return [entry[1]["trx_id"] for entry in orjson.loads(resp.body)["result"]]


async def transfers_seen(h: Any, rounds: int = 100) -> int:
    """Rounds in which the client read its balance and its account history right after its
    transfer and saw it in both."""
    start = await balance(h, "bob")
    seen = 0
    for n in range(rounds):
        await send(h, n)
        seen += (await balance(h, "bob") == start + n + 1) and len(await history(h, "bob")) == n + 1
    return seen


@pytest.mark.parametrize("cache", [False, True])
async def test_a_client_reads_its_own_transfers(harness: Any, cache: bool) -> None:
    h = await harness(
        fleet(), strategy="round_robin", hedge={"enabled": False}, cache={"enabled": cache}
    )
    assert await transfers_seen(h) == 100
    assert len(h.balancer.fleet.nodes) == 3
    assert sum(1 for node in h.nodes.values() if node.broadcasts) == 1  # they stayed on one


@pytest.mark.parametrize("cache", [False, True])
async def test_without_it_the_same_client_misses_its_transfers(harness: Any, cache: bool) -> None:
    """The test above has teeth: the same fleet and client, read-your-writes off."""
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        cache={"enabled": cache},
        consistency={"read_your_writes": False},
    )
    assert await transfers_seen(h) < 100


async def test_when_the_node_that_took_it_dies_a_node_past_its_block_answers(
    harness: Any,
) -> None:
    h = await harness(fleet(), strategy="fastest", hedge={"enabled": False})
    start = await balance(h, "bob")
    await send(h, 1)  # fastest: b, 4 blocks behind, takes it
    took = next(name for name, node in h.nodes.items() if node.broadcasts)
    await h.nodes[took].stop()
    assert await balance(h, "bob") == start + 1  # a (at the head) has it in a block; c not
    resp = await h.post(
        orjson.dumps({"jsonrpc": "2.0", "method": ACCOUNTS, "params": [["bob"]], "id": 2}),
        peer="10.0.0.1",
    )
    assert h.name_of(resp) == "a"


async def test_when_the_node_that_took_it_stops_answering_reads_go_elsewhere_at_once(
    harness: Any,
) -> None:
    """The node that took the client's transfer goes dark (it reads requests and never
    answers). The client's next read, sent there, is hedged to a node past the transfer's
    block (a node alone in a request's choice was never hedged: it waited out the try's
    timeout, and under load the retry budget ran out: errors); while that try hangs, the
    client's reads go to that node directly."""
    h = await harness(fleet(), strategy="fastest", hedge={"min_delay": 0.02, "max_delay": 0.1})
    start = await balance(h, "bob")
    await send(h, 1)  # fastest: b, 4 blocks behind, takes it
    assert [n for n, node in h.nodes.items() if node.broadcasts] == ["b"]
    h.nodes["b"].set(hang_rate=1.0)
    body = orjson.dumps({"jsonrpc": "2.0", "method": ACCOUNTS, "params": [["bob"]], "id": 2})
    resp = await h.post(body, peer="10.0.0.1")
    assert h.name_of(resp) == "a"  # at the head: past the transfer's block (c lags too)
    assert orjson.loads(resp.body)["result"][0]["balance"] == f"{start + 1:.3f} STEEM"
    assert h.balancer.stats.hedges == 1
    resp = await h.post(body, peer="10.0.0.1")
    assert h.name_of(resp) == "a"
    assert h.balancer.stats.hedges == 1  # not sent to b first: it is not answering


async def test_other_clients_are_balanced_as_before(harness: Any) -> None:
    h = await harness(fleet(), strategy="round_robin", hedge={"enabled": False})
    await send(h, 1, peer="10.0.0.1")
    served = set()
    for n in range(6):
        body = orjson.dumps({"jsonrpc": "2.0", "method": ACCOUNTS, "params": [["bob"]], "id": n})
        served.add(h.name_of(await h.post(body, peer="10.0.0.2")))
    assert served == {"a", "b", "c"}
    assert len(h.gateway.writes) == 1


async def test_only_the_reads_that_may_see_it_follow_the_broadcast(harness: Any) -> None:
    """After its transfer, the client's account reads go to the node that took it; its
    reads of what no transaction changes (the chain's properties, a block by number, the
    node's version), alone or in a batch, are balanced as anyone's: a broadcasting client
    does not tie the rest of its traffic to one node."""
    h = await harness(fleet(), strategy="round_robin", hedge={"enabled": False})
    await send(h, 1)
    took = [name for name, node in h.nodes.items() if node.broadcasts]
    assert len(took) == 1

    async def served(*members: tuple[str, list[Any]]) -> set[str]:
        names = set()
        for n in range(6):
            calls = [{"jsonrpc": "2.0", "method": m, "params": p, "id": n} for m, p in members]
            body = orjson.dumps(calls if len(calls) > 1 else calls[0])
            resp = await h.post(body, peer="10.0.0.1")
            assert resp.status == 200, resp.body
            names.add(h.name_of(resp))
        return names

    assert await served((ACCOUNTS, [["bob"]])) == set(took)
    assert await served((HISTORY, ["bob", -1, 10])) == set(took)
    assert await served(("condenser_api.get_version", [])) == {"a", "b", "c"}
    assert await served(("condenser_api.get_block", [1])) == {"a", "b", "c"}
    blind = (("condenser_api.get_config", []), ("condenser_api.get_version", []))
    assert await served(*blind) == {"a", "b", "c"}
    assert await served(*blind, (ACCOUNTS, [["bob"]])) == set(took)


async def test_the_block_a_synchronous_broadcast_names_is_never_null(harness: Any) -> None:
    """``broadcast_transaction_synchronous`` answers with the block that holds the
    transaction; a read of that block (balanced as anyone's: a block is read by number) is
    not answered ``null`` by a node that has not got it yet: it is asked again until one
    has. (The simulated node names its next block at once, where a real one answers once it
    has applied it: here no node has the block until the chain makes it.)"""
    nodes = {name: Behaviour(latency=0.001) for name in "abc"}  # all at the head
    h = await harness(nodes, strategy="round_robin", hedge={"enabled": False})
    tx = {"jsonrpc": "2.0", "method": f"{BROADCAST}_synchronous", "params": [transfer(7)], "id": 1}
    resp = await h.post(orjson.dumps(tx), peer="10.0.0.1")
    block = orjson.loads(resp.body)["result"]["block_num"]
    read = {"jsonrpc": "2.0", "method": "condenser_api.get_block", "params": [block], "id": 2}
    resp = await h.post(orjson.dumps(read), peer="10.0.0.2")
    assert resp.status == 200, resp.body
    assert orjson.loads(resp.body)["result"] is not None


@pytest.mark.parametrize("ryw", [True, False])
async def test_a_broadcast_in_a_batch_is_read_back_in_a_batch(harness: Any, ryw: bool) -> None:
    """The transfer goes in a batch beside a read; the balance and the history are read back
    in a batch: the same guarantee as single calls (and without it, misses)."""
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        cache={"enabled": True},
        consistency={"read_your_writes": ryw},
    )
    start = await balance(h, "bob", peer="10.0.0.9")
    seen = 0
    for n in range(30):
        sent = [
            {"jsonrpc": "2.0", "method": BROADCAST, "params": [transfer(1000 + n)], "id": "tx"},
            {"jsonrpc": "2.0", "method": "condenser_api.get_config", "params": [], "id": "c"},
        ]
        answers = orjson.loads((await h.post(orjson.dumps(sent), peer="10.0.0.9")).body)
        assert answers[0] == {"jsonrpc": "2.0", "result": {}, "id": "tx"}
        reads = [
            {"jsonrpc": "2.0", "method": ACCOUNTS, "params": [["bob"]], "id": 1},
            {"jsonrpc": "2.0", "method": HISTORY, "params": ["bob", -1, 1000], "id": 2},
        ]
        got = orjson.loads((await h.post(orjson.dumps(reads), peer="10.0.0.9")).body)
        moved = float(got[0]["result"][0]["balance"].split()[0]) - start
        seen += moved == n + 1 and len(got[1]["result"]) == n + 1
    if ryw:
        assert seen == 30
    else:
        assert seen < 30
