"""Groups of backends, routes, the answer cache and coalescing, through the gateway, against
simulated nodes (a chain node, a hivemind-like backend, forks) in one event loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson

from rpcbalancer.sim import Behaviour
from rpcbalancer.sim.node import chain_head

DGP = "condenser_api.get_dynamic_global_properties"


def rpc(method: str, params: Any, ident: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": ident}


async def post(
    h: Any, doc: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    resp = await h.post(body, headers=headers)
    return resp.status, dict(resp.headers), resp.body


async def test_hits_answer_with_the_clients_own_id_byte_exact(harness: Any) -> None:
    h = await harness({"a": Behaviour(latency=0.002)}, cache={"enabled": True})
    old = chain_head(time.time()) - 100
    first = await post(h, rpc("condenser_api.get_block", [old], 1))
    assert first[1]["x-cache"] == "miss"
    big = 2**70
    body = b'{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[%d],"id":%d}' % (
        old,
        big,
    )
    hit = await post(h, body)
    assert hit[1]["x-cache"] == "hit"
    assert b'"id":%d' % big in hit[2]  # exact: beyond 64 bits
    text = await post(h, rpc("condenser_api.get_block", [old], "req-7"))
    assert text[1]["x-cache"] == "hit" and orjson.loads(text[2])["id"] == "req-7"
    assert orjson.loads(text[2])["result"] == orjson.loads(first[2])["result"]
    assert h.nodes["a"].counts["condenser_api.get_block"] == 1


async def test_a_batch_is_split_across_groups_and_the_cache_then_put_back_in_order(
    harness: Any,
) -> None:
    h = await harness(
        {"chain": Behaviour(latency=0.002)},
        cache={"enabled": True},
        upstreams={"hivemind": {"nodes": ["HM"], "probe": "passive"}},
        routes={"bridge": "hivemind", "appbase.condenser_api.get_content": "hivemind"},
        extra={"HM": ("hivemind", Behaviour(latency=0.002))},
    )
    old = chain_head(time.time()) - 100
    await post(h, rpc("condenser_api.get_block", [old], 0))  # cached now
    batch = [
        rpc("bridge.get_post", {"author": "a", "permlink": "p"}, "s"),
        rpc("condenser_api.get_block", [old], 2**70),
        rpc(DGP, [], 3),
        {"jsonrpc": "2.0", "method": DGP, "params": []},  # a notification: no answer
        rpc("condenser_api.get_content", ["b", "q"], 5),
    ]
    status, headers, body = await post(h, json.dumps(batch).encode())
    assert status == 200
    answers = orjson.loads(body.replace(b"%d" % 2**70, b'"big"'))
    assert [a["id"] for a in answers] == ["s", "big", 3, 5]
    assert b'"id":%d' % 2**70 in body
    assert answers[0]["result"]["author"] == "a" and answers[3]["result"]["permlink"] == "q"
    assert "head_block_number" in answers[2]["result"]
    assert set(headers["x-rpc-upstream"].split(",")) == {"default", "hivemind"}
    chain, hivemind = h.nodes["chain"].counts, h.nodes["HM"].counts
    assert chain["condenser_api.get_block"] == 1  # the batch's block came from the cache
    assert "bridge.get_post" not in chain and hivemind["bridge.get_post"] == 1
    assert hivemind["condenser_api.get_content"] == 1 and DGP not in hivemind


async def test_a_broadcast_in_a_batch_is_never_sent_twice(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.002, fail_methods="broadcast_transaction"),
         "b": Behaviour(latency=0.002)},
        cache={"enabled": True},
        strategy="first",
    )  # fmt: skip
    batch = [rpc(DGP, [], 1), rpc("condenser_api.broadcast_transaction", [{}], 2)]
    status, _, body = await post(h, batch)
    assert status == 502  # the node failed the whole batch: each member is told so
    assert [a["id"] for a in orjson.loads(body) if "error" in a] == [1, 2]
    sent = sum(n.counts["condenser_api.broadcast_transaction"] for n in h.nodes.values())
    assert sent == 1  # the node failed it: its answer stands, no other node gets it


async def test_a_reversible_block_is_kept_only_until_the_chain_moves_on(harness: Any) -> None:
    fast = Behaviour(latency=0.002, block_interval=0.4)
    h = await harness({"a": fast}, cache={"enabled": True})
    head = chain_head(time.time(), 0.4)
    young = rpc("condenser_api.get_block", [head - 1])
    assert (await post(h, young))[1]["x-cache"] == "miss"
    assert (await post(h, young))[1]["x-cache"] == "hit"
    await asyncio.sleep(1.0)  # the chain moves on (and the balancer learns of it)
    await post(h, rpc(DGP, [], 9))
    for group in h.balancer.groups.values():  # the chain's news now, not in half a second
        group.looked = -1.0
    assert (await post(h, young))[1]["x-cache"] == "miss"
    old = rpc("condenser_api.get_block", [head - 100])  # irreversible on the node: forever
    await post(h, old)
    await asyncio.sleep(1.0)
    await post(h, rpc(DGP, [], 10))
    assert (await post(h, old))[1]["x-cache"] == "hit"


async def test_a_fork_is_never_served_from_the_cache_after_the_chain_moved_on(
    harness: Any,
) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.002, block_interval=0.4, fork=3)}, cache={"enabled": True}
    )
    head = chain_head(time.time(), 0.4)
    block = rpc("condenser_api.get_block", [head])
    forked = orjson.loads((await post(h, block))[2])["result"]["block_id"]
    assert forked.endswith("f" * 32)
    h.nodes["a"].set(fork=0)  # the node converges on the canonical chain
    await asyncio.sleep(1.0)
    await post(h, rpc(DGP, [], 2))
    for group in h.balancer.groups.values():  # the chain's news now, not in half a second
        group.looked = -1.0
    status, headers, body = await post(h, block)
    assert status == 200 and headers["x-cache"] == "miss"
    assert orjson.loads(body)["result"]["block_id"].endswith("0" * 32)


async def test_identical_reads_in_flight_share_one_call_each_with_its_own_deadline(
    harness: Any,
) -> None:
    h = await harness({"a": Behaviour(latency=0.4)}, cache={"enabled": True})
    read = rpc("condenser_api.get_accounts", [["alice"]])
    leader = asyncio.create_task(post(h, read))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(post(h, {**read, "id": "f"}))
    hurried = asyncio.create_task(post(h, {**read, "id": "h"}, headers={"x-rpc-timeout": "0.1"}))
    hurried_answer = await hurried
    assert hurried_answer[0] == 504 and not leader.done()  # its own deadline, not the leader's
    first, second = await leader, await follower
    assert first[1]["x-cache"] == "miss" and second[1]["x-cache"] == "coalesced"
    assert orjson.loads(second[2])["id"] == "f"
    assert orjson.loads(second[2])["result"] == orjson.loads(first[2])["result"]
    assert h.nodes["a"].counts["condenser_api.get_accounts"] == 1
    events = h.balancer.answer_cache.totals()  # what status and metrics report
    assert (events["miss"], events["coalesced"], events["hit"]) == (1, 2, 0)


async def test_when_the_shared_call_fails_each_follower_fails_over_on_its_own(
    harness: Any,
) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.3, fail_methods="get_accounts"), "b": Behaviour(latency=0.01)},
        cache={"enabled": True},
        strategy="first",
        retries=0,
        hedge={"enabled": False},
    )
    read = rpc("condenser_api.get_accounts", [["bob"]])
    leader = asyncio.create_task(post(h, read))
    await asyncio.sleep(0.05)
    follower = await post(h, {**read, "id": 2})
    assert (await leader)[0] == 502  # no retries: the leader's own failure
    assert follower[0] == 200 and orjson.loads(follower[2])["id"] == 2
    assert h.nodes["b"].counts["condenser_api.get_accounts"] == 1


async def test_no_cache_skips_the_read_and_broadcasts_are_never_cached(harness: Any) -> None:
    h = await harness({"a": Behaviour(latency=0.002)}, cache={"enabled": True})
    read = rpc("condenser_api.get_accounts", [["carol"]])
    await post(h, read)
    bypass = await post(h, read, headers={"cache-control": "no-cache"})
    assert bypass[1]["x-cache"] == "bypass"
    assert h.nodes["a"].counts["condenser_api.get_accounts"] == 2
    tx = rpc("condenser_api.broadcast_transaction", [{}])
    await post(h, tx)
    again = await post(h, tx)
    assert "x-cache" not in again[1]
    assert len(h.nodes["a"].broadcasts) == 2


async def test_empty_answers_and_errors_are_never_cached(harness: Any) -> None:
    h = await harness({"a": Behaviour(latency=0.002)}, cache={"enabled": True})
    future = rpc("condenser_api.get_block", [chain_head(time.time()) + 1000])  # null
    await post(h, future)
    assert (await post(h, future))[1]["x-cache"] == "miss"
    unknown = rpc("condenser_api.get_no_such_thing", [], 1)
    await post(h, unknown)
    await post(h, unknown)
    assert h.nodes["a"].counts["condenser_api.get_no_such_thing"] == 2


async def test_translate_to_appbase_and_params_routes(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.002)},
        upstreams={"hivemind": {"nodes": ["HM"], "probe": "passive"}},
        routes={"steemd.database_api.get_state.params=['/trending']": "hivemind"},
        extra={"HM": ("hivemind", Behaviour(latency=0.002))},
        translate=True,
    )
    old = chain_head(time.time()) - 50
    status, headers, body = await post(h, rpc("get_block", [old], 4))
    assert status == 200 and orjson.loads(body)["id"] == 4
    assert headers["x-rpc-upstream"] == "default"
    assert h.nodes["a"].counts["condenser_api.get_block"] == 1  # forwarded as condenser_api
    await post(h, rpc("get_state", ["/trending"], 5))  # its group does not translate
    assert h.nodes["HM"].counts["get_state"] == 1 and "get_state" not in h.nodes["a"].counts


async def test_a_null_from_a_lagging_node_is_asked_of_another_node(harness: Any) -> None:
    h = await harness(
        {"behind": Behaviour(latency=0.002, lag=50), "ahead": Behaviour(latency=0.002)},
        strategy="first",
        max_block_lag=100,  # the lagging node stays usable: it is first in line
        max_head_age=1000,
    )
    head = chain_head(time.time())
    recent = await post(h, rpc("condenser_api.get_block", [head - 5], 1))
    assert orjson.loads(recent[2])["result"]["block_id"].startswith(f"{head - 5:08x}")
    assert recent[1]["x-rpc-node"] == h.nodes["ahead"].url
    assert recent[1]["x-rpc-attempts"] == "2"
    # A block to come: no node has it, none is asked twice, null is the answer.
    future = await post(h, rpc("condenser_api.get_block", [head + 1000], 2))
    assert orjson.loads(future[2])["result"] is None and future[1]["x-rpc-attempts"] == "1"
    # A transaction one node has not seen: every node is asked before null stands.
    missing = await post(h, rpc("condenser_api.get_transaction", ["ab" * 20], 3))
    assert missing[0] == 200 and missing[1]["x-rpc-attempts"] == "2"


async def test_a_broadcast_wrapped_in_call_is_never_resent_with_the_cache_on(
    harness: Any,
) -> None:
    """``call`` + ``condenser_api.broadcast_transaction`` is a broadcast however it is
    spelled: with the cache on, its try that timed out is not hedged or retried elsewhere
    (with ``broadcast.resend`` off; on, it goes on as test_broadcasts.py shows)."""
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()},
        strategy="first",
        cache={"enabled": True},
        timeouts={"per_try": 0.3, "total": 3},
        broadcast={"resend": False},
    )
    h.nodes["a"].set(hang_rate=1.0)
    resp = await h.call("call", ["condenser_api", "broadcast_transaction", [{}]])
    assert resp.status == 504
    assert h.nodes["b"].broadcasts == [] and len(h.nodes["a"].broadcasts) == 1
    assert "x-cache" not in dict(resp.headers)  # never a cache matter


async def test_cache_events_count_under_the_method_the_client_asked(harness: Any) -> None:
    """A legacy call translated to appbase is counted as the client asked it, for hits and
    stores alike (one label per method, whatever it was sent as)."""
    h = await harness({"a": Behaviour(latency=0.002)}, cache={"enabled": True}, translate=True)
    old = chain_head(time.time()) - 100
    for ident in range(3):
        status, _, _ = await post(h, rpc("get_block", [old], ident))
        assert status == 200
    counts = h.balancer.stats.cache
    labels = {label for label, _ in counts}
    assert labels == {h.balancer.stats.label_of("get_block")}
    (label,) = labels
    assert counts[label, "stored"] == 1 and counts[label, "hit"] == 2
