"""The router and gateway against real fake nodes on loopback, in one event loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from rpcbalancer.balancer import Balancer
from rpcbalancer.config import from_mapping
from rpcbalancer.proxy.gateway import Gateway, HttpRequest, HttpResponse
from rpcbalancer.sim import Behaviour

DGP = "condenser_api.get_dynamic_global_properties"
BROADCAST = "condenser_api.broadcast_transaction"


async def test_forwards_and_names_the_node(harness: Any) -> None:
    h = await harness({"a": Behaviour()})
    resp = await h.call(DGP, ident=9)
    headers = dict(resp.headers)
    assert resp.status == 200
    assert headers["x-rpc-node"] == h.nodes["a"].url
    assert headers["x-rpc-attempts"] == "1"
    assert headers["x-rpc-node-version"] == "0.23.1"
    doc = orjson.loads(resp.body)
    assert doc["id"] == 9
    assert doc["result"]["head_block_number"] == h.nodes["a"].head()


async def test_failover_when_a_node_dies(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "b": Behaviour()}, strategy="round_robin")
    await h.nodes["a"].stop()
    served = Counter()
    for i in range(20):
        resp = await h.call(DGP, ident=i)
        assert resp.status == 200, resp.body
        served[h.name_of(resp)] += 1
    assert served == {"b": 20}


async def test_a_dead_node_is_ejected_after_consecutive_failures(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()},
        strategy="round_robin",
        circuit_breaker={"failures": 2, "cooldown": 30},
    )
    await h.nodes["a"].stop()
    attempts = []
    for i in range(10):
        resp = await h.call(DGP, ident=i)
        attempts.append(dict(resp.headers)["x-rpc-attempts"])
    assert attempts.count("2") == 2  # two failed tries eject it; then no more detours
    assert "ejected" in (
        h.balancer.fleet.exclusion(h.balancer.fleet.nodes[0], time.monotonic()) or ""
    )


async def test_html_503_is_retried_elsewhere(harness: Any) -> None:
    h = await harness({"bad": Behaviour(), "good": Behaviour(latency=0.01)}, strategy="first")
    h.nodes["bad"].set(fail_rate=1.0)  # after the probe found it well
    resp = await h.call(DGP)
    assert resp.status == 200
    assert h.name_of(resp) == "good"
    assert dict(resp.headers)["x-rpc-attempts"] == "2"


async def test_sick_node_errors_are_retried_but_client_errors_are_not(harness: Any) -> None:
    h = await harness({"sick": Behaviour(), "ok": Behaviour()}, strategy="first")
    h.nodes["sick"].set(sick_rate=1.0)
    resp = await h.call(DGP)
    assert h.name_of(resp) == "ok"
    sick = h.balancer.fleet.nodes[0]
    assert sick.failures == 1
    # A method the nodes do not know: the answer goes back, no node is blamed.
    h2 = await harness({"x": Behaviour()}, strategy="first")
    resp = await h2.call("nosuch_api.nothing")
    assert resp.status == 200
    assert orjson.loads(resp.body)["error"]["code"] == -32601
    assert h2.balancer.fleet.nodes[0].failures == 0


async def test_broadcast_is_never_sent_twice(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()}, strategy="first", broadcast={"resend": False}
    )
    h.nodes["a"].set(fail_rate=1.0)
    resp = await h.call(BROADCAST, [{"ref_block_num": 1}])
    received = {name: len(node.broadcasts) for name, node in h.nodes.items()}
    assert received == {"a": 1, "b": 0}
    assert resp.status == 502
    error = orjson.loads(resp.body)["error"]
    assert "not JSON" in error["message"] or "503" in error["message"]


@pytest.mark.parametrize(
    ("params", "resend"),
    [
        (["condenser_api", "broadcast_transaction", [{}]], False),  # resending turned off
        ([3, "broadcast_transaction", [{}]], True),  # a numbered API: not known to dedupe
    ],
)
async def test_broadcast_that_timed_out_is_not_resent(
    harness: Any, params: list[Any], resend: bool
) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()},
        strategy="first",
        timeouts={"per_try": 0.3, "total": 3},
        broadcast={"resend": resend},
    )
    h.nodes["a"].set(hang_rate=1.0)
    resp = await h.call("call", params)
    assert resp.status == 504
    asked = f"{params[0]}.{params[1]}"
    assert (h.nodes["a"].counts[asked], h.nodes["b"].counts[asked]) == (1, 0)


async def test_broadcast_is_resent_when_it_never_reached_a_node(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "b": Behaviour()}, strategy="first")
    await h.nodes["a"].stop()
    resp = await h.call(BROADCAST, [{}])
    assert resp.status == 200
    assert h.name_of(resp) == "b"
    assert len(h.nodes["b"].broadcasts) == 1


async def test_reads_stay_off_a_lagging_node(harness: Any) -> None:
    h = await harness({"stale": Behaviour(lag=200, latency=0.0), "fresh": Behaviour(latency=0.01)})
    for i in range(30):
        resp = await h.call(DGP, ident=i)
        assert h.name_of(resp) == "fresh"
    assert h.nodes["stale"].counts[DGP] == 1  # the probe only


async def test_fail_open_when_every_node_is_excluded(harness: Any) -> None:
    h = await harness({"a": Behaviour(version="0.20.0")}, min_version="0.23.0")
    resp = await h.call(DGP)
    assert resp.status == 200
    assert h.balancer.fleet.candidates(time.monotonic())[1] is True


async def test_deadline_bounds_a_request_to_hanging_nodes(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()}, timeouts={"per_try": 0.4, "total": 0.6}, retries=5
    )
    for node in h.nodes.values():
        node.set(hang_rate=1.0)
    started = time.monotonic()
    resp = await h.call(DGP, ident="q")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    doc = orjson.loads(resp.body)
    assert doc["id"] == "q"
    assert doc["error"]["code"] == -32002
    assert elapsed < 1.5


async def test_no_node_at_all_gives_503(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, retries=0)
    await h.nodes["a"].stop()
    resp = await h.call(DGP, ident=4)
    assert resp.status == 502
    doc = orjson.loads(resp.body)
    assert "cannot connect" in doc["error"]["message"]
    assert doc["id"] == 4


async def test_fastest_moves_traffic_off_a_node_that_turns_slow(harness: Any) -> None:
    h = await harness({"a": Behaviour(latency=0.002), "b": Behaviour(latency=0.004)})
    first = Counter()
    for i in range(40):
        first[h.name_of(await h.call(DGP, ident=i))] += 1
    assert first["a"] > first["b"]
    h.nodes["a"].set(latency=0.08)
    later = Counter()
    for i in range(60):
        later[h.name_of(await h.call(DGP, ident=i))] += 1
    assert later["b"] > 50, later


async def test_race_forwards_to_the_first_node_to_answer(harness: Any) -> None:
    h = await harness(
        {"slow": Behaviour(latency=0.15), "quick": Behaviour(latency=0.005)}, strategy="race"
    )
    before = {n: node.counts["GET /"] for n, node in h.nodes.items()}
    resp = await h.call(DGP)
    assert h.name_of(resp) == "quick"
    pings = {n: node.counts["GET /"] - before[n] for n, node in h.nodes.items()}
    assert pings["quick"] == 1  # each node pinged once for this request
    assert pings["slow"] in (0, 1)  # cancelled, or arrived just before


async def test_race_ttl_reuses_the_winner(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(), "b": Behaviour(latency=0.05)}, strategy={"name": "race", "race_ttl": 30}
    )
    await h.call(DGP)
    pings = sum(node.counts["GET /"] for node in h.nodes.values())
    for i in range(5):
        await h.call(DGP, ident=i)
    assert sum(node.counts["GET /"] for node in h.nodes.values()) == pings


async def test_batches_pass_through_untouched(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, annotate="body")
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "method": "condenser_api.get_version", "params": [], "id": 1},
            {
                "jsonrpc": "2.0",
                "method": "call",
                "params": ["condenser_api", "get_accounts", [["x"]]],
                "id": 2,
            },
        ]
    )
    resp = await h.post(body)
    doc = orjson.loads(resp.body)
    assert [m["id"] for m in doc] == [1, 2]
    assert all("__server__" not in m for m in doc)
    assert [(a["name"], a["balance"]) for a in doc[1]["result"]] == [("x", "100.000 STEEM")]


async def test_annotate_body_adds_server_and_version(harness: Any) -> None:
    h = await harness({"a": Behaviour(version="0.23.1")}, annotate="body")
    doc = orjson.loads((await h.call(DGP, ident=5)).body)
    assert doc["__server__"] == h.nodes["a"].url
    assert doc["__version__"] == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "blockchain_version": "0.23.1",
            "steem_revision": "f" * 40,
            "fc_revision": "f" * 40,
        },
    }
    assert doc["id"] == 5
    assert "head_block_number" in doc["result"]


async def test_probes_cost_nothing_on_the_hot_path(harness: Any) -> None:
    h = await harness({"a": Behaviour()}, annotate="body", probe={"interval": 3600})
    before = h.nodes["a"].counts["condenser_api.get_version"]
    for i in range(10):
        await h.call(DGP, ident=i)
    assert h.nodes["a"].counts["condenser_api.get_version"] == before


async def test_concurrent_load_is_spread_by_in_flight_count(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.02), "b": Behaviour(latency=0.02)}, strategy="least_conn"
    )
    results = await asyncio.gather(*(h.call(DGP, ident=i) for i in range(40)))
    served = Counter(h.name_of(r) for r in results)
    assert all(r.status == 200 for r in results)
    assert 10 <= served["a"] <= 30, served


async def test_ip_hash_uses_forwarded_for_only_from_trusted_proxies(harness: Any) -> None:
    h = await harness(
        {f"n{i}": Behaviour() for i in range(4)}, strategy="ip_hash", trusted_proxies=["10.0.0.0/8"]
    )
    body = orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": 1})

    async def served(peer: str, xff: str) -> str:
        resp = await h.post(body, peer=peer, headers={"x-forwarded-for": xff})
        return h.name_of(resp)

    via_proxy = {await served("10.1.1.1", f"198.51.100.{i}") for i in range(40)}
    assert len(via_proxy) > 1  # clients behind the proxy are told apart
    spoofed = {await served("203.0.113.7", f"198.51.100.{i}") for i in range(40)}
    assert len(spoofed) == 1  # an untrusted peer cannot pick its own identity


async def test_per_node_headers_reach_the_node(harness: Any) -> None:
    from rpcbalancer.sim import FakeNode

    node = FakeNode("edge")
    await node.start()
    try:
        config = from_mapping(
            {"nodes": [{"url": node.url, "headers": {"X-Edge-Key": "k1"}}], "store": "none"}, env={}
        )
        async with Balancer(config) as balancer:
            resp = await Gateway(balancer).handle(
                HttpRequest(
                    "POST", "/", body=b'{"jsonrpc":"2.0","method":"a.b","id":1}', peer="192.0.2.1"
                )
            )
        assert resp.status == 200
        assert node.last_headers["X-Edge-Key"] == "k1"
        assert node.last_headers["X-Forwarded-For"] == "192.0.2.1"
    finally:
        await node.stop()


async def test_dns_names_become_one_node_per_address() -> None:
    from rpcbalancer.sim import FakeNode

    first = FakeNode("one", host="127.0.0.1")
    await first.start()
    second = FakeNode("two", host="127.0.0.2")
    await second.start(first.port)  # same port, another address: one DNS name for both
    answers = {"nodes.test": ["127.0.0.1", "127.0.0.2"]}
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[host]

    try:
        config = from_mapping(
            {
                "nodes": [f"http://nodes.test:{first.port}"],
                "resolve_dns": True,
                "strategy": "round_robin",
                "store": "none",
                "cache": {"enabled": False},  # every call to a node
            },
            env={},
        )
        async with Balancer(config, resolver=resolver) as balancer:
            gateway = Gateway(balancer)
            assert len(balancer.fleet.nodes) == 2
            served = Counter()
            for i in range(10):
                resp = await gateway.handle(
                    HttpRequest(
                        "POST",
                        "/",
                        body=orjson.dumps({"jsonrpc": "2.0", "method": DGP, "id": i}),
                        peer="127.0.0.1",
                    )
                )
                assert resp.status == 200
                served[dict(resp.headers)["x-rpc-node"]] += 1
            assert sorted(served.values()) == [5, 5]
            assert all("nodes.test" in name for name in served)
            assert first.last_headers["Host"] == f"nodes.test:{first.port}"
            assert second.last_headers["Host"] == f"nodes.test:{first.port}"
            # One address goes away: its node leaves, the other keeps its state.
            kept = next(n for n in balancer.fleet.nodes if "127.0.0.1" in n.url)
            answers["nodes.test"] = ["127.0.0.1"]
            assert balancer.dns is not None
            await balancer.dns.refresh()
            assert balancer.fleet.nodes == [kept]
            assert kept.requests >= 5
        assert asked[0] == ("nodes.test", first.port)
    finally:
        await first.stop()
        await second.stop()


async def test_the_system_resolver_resolves_localhost() -> None:
    from rpcbalancer.upstream.names import system_resolver

    assert "127.0.0.1" in await system_resolver("localhost", 80)


async def warm(h: Any, count: int = 30) -> None:
    for i in range(count):
        assert (await h.call(DGP, ident=i)).status == 200


async def test_a_slow_read_is_hedged_and_the_loser_is_not_blamed(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.003), "b": Behaviour(latency=0.003)},
        strategy="first",
        hedge={"min_delay": 0.02, "max_delay": 0.2},
    )
    await warm(h)
    h.nodes["a"].set(latency=0.5)  # a turns slow: the hedge goes to b after ~20 ms
    started = time.monotonic()
    resp = await h.call(DGP, ident="h")
    elapsed = time.monotonic() - started
    headers = dict(resp.headers)
    assert resp.status == 200 and h.name_of(resp) == "b"
    assert headers["x-rpc-hedged"] == "1" and headers["x-rpc-attempts"] == "2"
    assert elapsed < 0.3
    assert h.balancer.fleet.nodes[0].failures == 0  # cancelled, not failed


async def test_a_node_that_swallows_requests_is_charged_and_ejected(harness: Any) -> None:
    """``a`` (the fastest) never answers 30% of its requests: each such try loses its hedge,
    is charged the time it took (its estimate rises, so the strategy turns away) and counts
    as a slow outcome (so ``a`` is ejected as an outlier). Every client read is answered."""
    h = await harness(
        {
            "a": Behaviour(latency=0.001),
            "b": Behaviour(latency=0.003),
            "c": Behaviour(latency=0.003),
        },
        strategy="fastest",
        hedge={"min_delay": 0.01, "max_delay": 0.05},
        budget={"ratio": 0.5},
        timeouts={"per_try": 2, "total": 4},
    )
    await warm(h, 40)
    a = next(node for node in h.balancer.fleet.nodes if node.url == h.nodes["a"].url)
    before = a.latencies.ewma
    h.nodes["a"].set(hang_rate=0.3)
    served = []
    for i in range(200):
        if i == 100:
            await asyncio.sleep(1.1)  # (the outlier review runs every second)
        resp = await h.call(DGP, ident=i)
        assert resp.status == 200
        served.append(h.name_of(resp))
    assert a.breaker.ejected_by.get("outlier", 0) >= 1
    assert a.failures == 0  # swallowed tries are slow outcomes, not breaker failures
    assert a.latencies.ewma is not None and before is not None and a.latencies.ewma > before
    assert served[-80:].count("a") == 0  # out of rotation


async def test_hedges_and_retries_stop_when_the_budget_is_spent(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.003), "b": Behaviour(latency=0.003)},
        strategy="first",
        hedge={"min_delay": 0.02},
        budget={"ratio": 0.0, "min_per_second": 0.0, "burst": 1.0},
        circuit_breaker={"failures": 100},
    )
    await warm(h)
    h.nodes["a"].set(latency=0.3)
    first = await h.call(DGP)
    assert dict(first.headers).get("x-rpc-hedged") == "1"  # the one token
    second = await h.call(DGP)
    assert "x-rpc-hedged" not in dict(second.headers) and h.name_of(second) == "a"
    h.nodes["a"].set(latency=0.003, fail_rate=1.0)
    third = await h.call(DGP)
    assert third.status == 502 and dict(third.headers)["x-rpc-attempts"] == "1"  # no retry


async def test_a_hedge_the_budget_refused_is_asked_again_while_the_try_hangs(
    harness: Any,
) -> None:
    """A burst of hedges can spend the budget just before a try hangs: that try's hedge is
    asked for again as tokens come back, so the request is answered in a fraction of a
    second, not after the try's whole timeout."""
    h = await harness(
        {"a": Behaviour(latency=0.003), "b": Behaviour(latency=0.003)},
        strategy="first",
        hedge={"min_delay": 0.02, "max_delay": 0.05},
        budget={"ratio": 0.0, "min_per_second": 10.0, "burst": 1.0},
        timeouts={"per_try": 3, "total": 6},
        circuit_breaker={"failures": 100},
    )
    await warm(h)
    h.nodes["a"].set(hang_rate=1.0)
    for i in range(3):  # the first takes the one token; the others wait for the refill
        resp = await h.call(DGP, ident=i)
        assert resp.status == 200 and h.name_of(resp) == "b"
        # Hedged, not retried after the 3 s try: answered while the try on a still hung.
        assert dict(resp.headers)["x-rpc-hedged"] == "1"
        assert dict(resp.headers)["x-rpc-attempts"] == "2"
    assert h.balancer.router.budget.spent == 3


async def test_broadcasts_are_never_hedged(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.003), "b": Behaviour(latency=0.003)},
        strategy="first",
        hedge={"min_delay": 0.02},
    )
    await warm(h)
    h.nodes["a"].set(latency=0.2)
    resp = await h.call(BROADCAST, [{}])
    assert resp.status == 200 and h.name_of(resp) == "a"
    assert [len(n.broadcasts) for n in h.nodes.values()] == [1, 0]


async def test_an_outlier_is_ejected_and_traffic_moves_off_it(harness: Any) -> None:
    h = await harness(
        {n: Behaviour() for n in ("a", "b", "c")},
        strategy="round_robin",
        outlier={"min_requests": 10},
        circuit_breaker={"failures": 50},
    )
    h.nodes["a"].set(fail_rate=0.5)
    await warm(h, 60)  # every failure is retried: clients see none
    await h.balancer._review_outliers()
    fleet = h.balancer.fleet
    reason = fleet.exclusion(fleet.nodes[0], time.monotonic())
    assert reason is not None and "ejected" in reason
    served = [h.name_of(await h.call(DGP, ident=i)) for i in range(20)]
    assert "a" not in served


async def test_per_node_concurrency_cap_with_a_bounded_queue(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.3)}, node_concurrency=2, queue_size=1, hedge={"enabled": False}
    )
    started = time.monotonic()
    results = await asyncio.gather(*(h.call(DGP, ident=i) for i in range(5)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 200, 503, 503]  # two in flight, one in line, two turned away
    refused = next(r for r in results if r.status == 503)
    assert "requests in flight" in orjson.loads(refused.body)["error"]["message"]
    assert time.monotonic() - started < 1.5  # the queued one ran as soon as a slot freed
    assert h.balancer.fleet.nodes[0].inflight == 0


async def test_a_node_that_starts_serving_old_data_is_dropped_from_its_answers(
    harness: Any,
) -> None:
    # (The head held off: b's answers must show as b's, not be replaced by a's.)
    h = await harness(
        {"a": Behaviour(), "b": Behaviour()},
        strategy="round_robin",
        probe={"interval": 3600},
        consistency={"monotonic_head": False},
    )
    await warm(h, 4)
    h.nodes["b"].set(lag=300)  # no probe will look for an hour: only its answers tell
    served = [h.name_of(await h.call(DGP, ident=i)) for i in range(6)]
    await asyncio.sleep(0.06)  # the usable-node list is kept 50 ms
    later = [h.name_of(await h.call(DGP, ident=i)) for i in range(10)]
    assert "b" in served and "b" not in later
    fleet = h.balancer.fleet
    assert "blocks behind" in (fleet.exclusion(fleet.nodes[1], time.monotonic()) or "")


async def test_a_client_that_leaves_stops_its_request_without_blaming_the_node(
    harness: Any,
) -> None:
    """The data plane's callback door: cancelling the handle (the client closed its
    connection) aborts the try; the node is neither blamed nor left counted in flight."""
    h = await harness({"a": Behaviour(latency=0.5)}, hedge={"enabled": False})
    replies: list[HttpResponse] = []
    body = orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": 1})
    handle = h.gateway.serve(HttpRequest("POST", "/", body=body, peer="127.0.0.1"), replies.append)
    assert handle is not None
    await asyncio.sleep(0.1)
    node = h.balancer.fleet.nodes[0]
    assert node.inflight == 1
    handle.cancel()
    assert node.inflight == 0
    await asyncio.sleep(0.6)  # past the node's answer time: nothing arrives late
    assert replies == []
    assert node.failures == 0


async def test_the_callback_door_answers_like_the_awaitable_one(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "b": Behaviour()})
    body = orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": 7})
    done = asyncio.get_running_loop().create_future()
    h.gateway.serve(HttpRequest("POST", "/", body=body, peer="127.0.0.1"), done.set_result)
    served = await asyncio.wait_for(done, 5)
    awaited = await h.post(body)
    assert served.status == awaited.status == 200
    assert orjson.loads(served.body)["id"] == 7
    assert {k for k, _ in served.headers} == {k for k, _ in awaited.headers}
    invalid: list[HttpResponse] = []  # refused before any node: answered before serve returns
    assert (
        h.gateway.serve(HttpRequest("POST", "/", body=b"{", peer="1.2.3.4"), invalid.append) is None
    )
    assert [r.status for r in invalid] == [400]


async def test_ended_requests_waiting_in_the_hedge_queue_hold_no_bodies(harness: Any) -> None:
    h = await harness(
        {"a": Behaviour(latency=0.002), "b": Behaviour(latency=0.002)},
        hedge={"min_delay": 0.5, "max_delay": 0.5, "min_samples": 5},
    )
    await warm(h, 20)
    for i in range(10):
        assert (await h.call(DGP, ident=i)).status == 200
    waiting = list(h.balancer.router.hedges.items)
    assert len(waiting) >= 10  # their hedges are not due for half a second
    for _, forwarding, _ in waiting:
        assert forwarding.state_name == "done"
        assert forwarding.req.body is None and forwarding.outcome.response is None
