"""Heavy-method guards: a call that asks for more than one call may (the route's ``limit``,
else the chain preset's cap) is refused with an error naming the limit, before any node
spends on it."""

from __future__ import annotations

from typing import Any

import orjson

from rpcbalancer.config import load
from rpcbalancer.sim import Behaviour
from rpcbalancer.sim.node import LOG_EVERY

from ..conftest import peer_file

HISTORY = "condenser_api.get_account_history"


def error_of(resp: Any) -> dict[str, Any]:
    doc = orjson.loads(resp.body)
    assert "result" not in doc, doc
    return dict(doc["error"])


async def test_the_preset_caps_account_history(harness: Any) -> None:
    h = await harness({"a": Behaviour()})
    resp = await h.call(HISTORY, ["alice", -1, 5000], ident=4)
    assert resp.status == 400
    error = error_of(resp)
    assert error["code"] == -32602
    assert "5000" in error["message"] and "at most 1000" in error["message"]
    assert orjson.loads(resp.body)["id"] == 4
    assert h.nodes["a"].counts[HISTORY] == 0  # no node spent anything on it
    assert h.balancer.stats.heavy_refused == 1
    await h.call(HISTORY, ["alice", -1, 1000])
    assert h.nodes["a"].counts[HISTORY] == 1  # within the cap: the node's to answer


async def test_named_params_and_call_are_counted_too(harness: Any) -> None:
    h = await harness({"a": Behaviour()})
    named = await h.call(
        "account_history_api.get_account_history", {"account": "a", "start": -1, "limit": 2000}
    )
    wrapped = await h.call("call", ["condenser_api", "get_account_history", ["a", -1, 1001]])
    assert [error_of(r)["code"] for r in (named, wrapped)] == [-32602, -32602]
    counts = h.nodes["a"].counts
    assert counts["account_history_api.get_account_history"] == counts[HISTORY] == 0


async def test_a_route_sets_its_own_limit_or_none(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour()},
        routes={
            "appbase.condenser_api.get_account_history": {"limit": 100},
            "appbase.block_api.get_block_range": {"limit": 0},
        },
    )
    assert "at most 100" in error_of(await h.call(HISTORY, ["alice", -1, 101]))["message"]
    ranged = await h.call("block_api.get_block_range", {"starting_block_num": 1, "count": 5000})
    assert ranged.status == 200  # no limit on this route: the node's own word
    assert h.nodes["a"].counts["block_api.get_block_range"] == 1


async def test_a_batch_member_over_the_limit_is_refused_alone(harness: Any) -> None:
    h = await harness({"a": Behaviour()})
    batch = [
        {"jsonrpc": "2.0", "method": HISTORY, "params": ["alice", -1, 9999], "id": 1},
        {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "id": 2},
    ]
    resp = await h.post(orjson.dumps(batch))
    answers = {a["id"]: a for a in orjson.loads(resp.body)}
    assert answers[1]["error"]["code"] == -32602
    assert "head_block_number" in answers[2]["result"]
    assert h.nodes["a"].counts[HISTORY] == 0


async def test_evm_log_queries_over_the_cap_are_refused(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, chain="evm")
    wide = await h.call("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}])
    error = error_of(wide)
    assert "at most 1000000" in error["message"]
    narrow = await h.call("eth_getLogs", [{"fromBlock": "0x10", "toBlock": "0x20"}])
    assert narrow.status == 200
    assert h.nodes["a"].counts["eth_getLogs"] == 1


async def test_jussis_account_history_limit_is_honoured(harness: Any) -> None:
    config = load(peer_file("jussi-DEV_config.json"), env={})
    limits = {p: r.limit for p, r in config.routes.items() if r.limit is not None}
    assert set(limits.values()) == {100}  # its "account_history_limit": 100
    assert "appbase.condenser_api.get_account_history" in limits


async def test_a_wide_log_query_is_split_across_nodes_and_merged_in_order(
    harness: Any,
) -> None:
    """eth_getLogs over 100,000 blocks, which no node serves in one call (10,000 at most):
    ten chunks across the nodes, the logs back in block order, as one node would give them."""
    h = await harness({n: Behaviour() for n in "abc"}, chain="evm", strategy="round_robin")
    head = h.nodes["a"].head()
    first = head - 100_000 + 1
    resp = await h.call("eth_getLogs", [{"fromBlock": hex(first), "toBlock": "latest"}], 8)
    doc = orjson.loads(resp.body)
    assert doc["id"] == 8, doc
    numbers = [int(log["blockNumber"], 16) for log in doc["result"]]
    expected = [n for n in range(first, head + 1) if n % LOG_EVERY == 0]
    assert numbers == expected and len(numbers) == 100
    asked = {name: node.counts["eth_getLogs"] for name, node in h.nodes.items()}
    assert sum(asked.values()) == 10 and all(asked.values())  # every node took a share
    served = dict(resp.headers)["x-rpc-node"]
    assert len(served.split(", ")) == 3


async def test_without_split_the_same_query_fails_as_the_node_says(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, chain="evm", routes={"eth_getLogs": {"split": 0}})
    head = h.nodes["a"].head()
    resp = await h.call("eth_getLogs", [{"fromBlock": hex(head - 50_000), "toBlock": "latest"}])
    assert "too wide" in error_of(resp)["message"]


async def test_a_chunk_that_fails_fails_the_query_naming_its_range(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, chain="evm", routes={"eth_getLogs": {"split": 20_000}})
    head = h.nodes["a"].head()
    resp = await h.call("eth_getLogs", [{"fromBlock": hex(head - 50_000), "toBlock": "latest"}])
    message = error_of(resp)["message"]
    assert "eth_getLogs for blocks" in message and "too wide" in message
