"""The head a client is told never goes back (``consistency.monotonic_head``, proxy/heads.py).

Real fake nodes on loopback at different heights, all within the lag rule, whose lags drift
while clients poll the head through the balancer, as apps that follow the chain do.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import orjson
import pytest

from rpcbalancer.sim import Behaviour

DGP = "condenser_api.get_dynamic_global_properties"
INTERVAL = 0.2
"""Seconds per block in these fleets: the head moves several times during a test."""


def fleet() -> dict[str, Behaviour]:
    # The lagging nodes are the faster ones, as in the measurement.
    return {
        "a": Behaviour(latency=0.004, block_interval=INTERVAL),
        "b": Behaviour(latency=0.002, lag=3, block_interval=INTERVAL),
        "c": Behaviour(latency=0.001, lag=6, block_interval=INTERVAL),
    }


def head_of(body: bytes, chain: str = "steem") -> int:
    result = orjson.loads(body)["result"]
    return int(result, 16) if chain == "evm" else int(result["head_block_number"])


async def poll(h: Any, method: str, calls: int, chain: str, seed: int) -> list[int]:
    """Heads seen by one client polling ``method``, the fleet drifting under it."""
    rng = random.Random(seed)
    heads = []
    for i in range(calls):
        if i % 7 == 0:  # the nodes' lags drift, each 0-6 blocks behind
            for node in h.nodes.values():
                node.set(lag=rng.randint(0, 6))
        resp = await h.call(method, ident=i)
        assert resp.status == 200, resp.body
        heads.append(head_of(resp.body, chain))
    return heads


def went_back(heads: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(heads) if after < before)


@pytest.mark.parametrize("strategy", ["fastest", "round_robin", "random"])
async def test_pollers_never_see_the_head_go_back(harness: Any, strategy: str) -> None:
    h = await harness(fleet(), strategy=strategy, hedge={"enabled": False})
    seen = await asyncio.gather(*(poll(h, DGP, 150, "steem", seed) for seed in range(4)))
    assert [went_back(heads) for heads in seen] == [0, 0, 0, 0]
    assert all(heads[-1] > heads[0] for heads in seen)  # and the head moved on
    floor = h.balancer.groups["default"].heads
    if strategy != "fastest":
        assert floor.held > 0  # lower answers came, and were held


async def test_without_the_floor_the_same_fleet_shows_the_head_going_back(harness: Any) -> None:
    """The test above has teeth: the same fleet and clients, the floor off."""
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        consistency={"monotonic_head": False},
    )
    seen = await asyncio.gather(*(poll(h, DGP, 150, "steem", seed) for seed in range(4)))
    assert sum(went_back(heads) for heads in seen) > 0
    assert h.balancer.groups["default"].heads is None


async def test_cache_hits_and_other_spellings_hold_the_head_too(harness: Any) -> None:
    # Answers kept 50 ms (the preset keeps them a second): hits and misses both.
    short = {"ttl": 0.05}
    h = await harness(
        fleet(),
        strategy="round_robin",
        cache={"enabled": True},
        routes={"appbase.condenser_api": short, "appbase.database_api": short},
    )
    seen: dict[str, list[int]] = {}
    for method in (DGP, "database_api.get_dynamic_global_properties", "call"):
        seen[method] = []
    rng = random.Random(5)
    verdicts: set[str] = set()
    for i in range(120):
        if i % 5 == 0:
            for node in h.nodes.values():
                node.set(lag=rng.randint(0, 6))
        for method in seen:
            if method == "call":
                params: Any = ["database_api", "get_dynamic_global_properties", {}]
            else:
                params = {} if method.startswith("database_api") else []
            body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": i})
            resp = await h.post(body)
            assert resp.status == 200
            verdicts.add(dict(resp.headers).get("x-cache", ""))
            doc = orjson.loads(resp.body)
            assert doc["id"] == i  # a held answer carries the client's own id
            seen[method].append(doc["result"]["head_block_number"])
        await asyncio.sleep(0.01)
    assert {m: went_back(heads) for m, heads in seen.items()} == dict.fromkeys(seen, 0)
    assert h.balancer.groups["default"].heads.held > 0
    assert {"hit", "miss"} <= verdicts


async def test_evm_block_number_never_decreases(harness: Any) -> None:
    h = await harness(fleet(), chain="evm", strategy="round_robin", hedge={"enabled": False})
    seen = await asyncio.gather(*(poll(h, "eth_blockNumber", 120, "evm", s) for s in range(3)))
    assert [went_back(heads) for heads in seen] == [0, 0, 0]
    assert h.balancer.groups["default"].heads.held > 0


async def test_the_floor_lets_go_when_every_node_stays_behind_it(harness: Any) -> None:
    """The node that reached the head dies; the others stay behind it: the held head is
    served for ``hold_for`` seconds, then the nodes' own answers pass (a head that never
    moves would be worse than one that goes back once)."""
    h = await harness(
        {
            "a": Behaviour(block_interval=5.0),
            "b": Behaviour(lag=4, block_interval=5.0),
        },
        strategy="first",
        hedge={"enabled": False},
        consistency={"hold_for": 0.5},
        probe={"interval": 3600},
    )
    top = head_of((await h.call(DGP)).body)
    await h.nodes["a"].stop()
    held = await h.call(DGP, ident=2)
    assert head_of(held.body) == top
    assert dict(held.headers)["x-rpc-node"] == h.nodes["a"].url  # the bytes are a's
    assert orjson.loads(held.body)["id"] == 2
    await asyncio.sleep(0.6)
    passed = await h.call(DGP, ident=3)
    assert head_of(passed.body) < top
    floor = h.balancer.groups["default"].heads
    assert (floor.held, floor.released) == (1, 1)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("monotonic", [True, False])
async def test_a_block_clients_were_told_exists_is_never_null(
    harness: Any, monotonic: bool, batch: bool
) -> None:
    """The node at the head goes; the other is 5 blocks behind and says ``null`` for the
    head block a client was told of: the read waits for it (a fraction of a block at a time,
    within its deadline) rather than answer ``null``, alone or as a batch's member. Off, the
    ``null`` is passed on."""
    h = await harness(
        {"a": Behaviour(block_interval=0.3), "b": Behaviour(lag=5, block_interval=0.3)},
        strategy="first",
        hedge={"enabled": False},
        consistency={"monotonic_head": monotonic},
        probe={"interval": 3600},
    )
    top = head_of((await h.call(DGP)).body)
    await h.nodes["a"].stop()
    if batch:
        members = [
            {"jsonrpc": "2.0", "method": "condenser_api.get_block", "params": [top], "id": 9},
            {"jsonrpc": "2.0", "method": "condenser_api.get_config", "params": [], "id": 10},
        ]
        resp = await h.post(orjson.dumps(members))
        doc, config = orjson.loads(resp.body)
        assert config["id"] == 10 and "result" in config
    else:
        resp = await h.call("condenser_api.get_block", [top], ident=9)
        doc = orjson.loads(resp.body)
    assert doc["id"] == 9
    if monotonic:
        assert doc["result"]["block_id"].startswith(f"{top:08x}")
        assert h.name_of(resp) == "b"
    else:
        assert doc["result"] is None


@pytest.mark.parametrize("monotonic", [True, False])
async def test_batch_members_hold_the_head_too(harness: Any, monotonic: bool) -> None:
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        consistency={"monotonic_head": monotonic},
    )
    rng = random.Random(4)
    seen: list[list[int]] = [[], []]
    for i in range(120):
        if i % 5 == 0:
            for node in h.nodes.values():
                node.set(lag=rng.randint(0, 6))
        batch = [
            {"jsonrpc": "2.0", "method": DGP, "params": [], "id": f"a{i}"},
            {"jsonrpc": "2.0", "method": "condenser_api.get_config", "params": [], "id": "c"},
            {"jsonrpc": "2.0", "method": DGP, "params": [], "id": f"b{i}"},
        ]
        answers = orjson.loads((await h.post(orjson.dumps(batch))).body)
        assert [a["id"] for a in answers] == [f"a{i}", "c", f"b{i}"]
        seen[0].append(answers[0]["result"]["head_block_number"])
        seen[1].append(answers[2]["result"]["head_block_number"])
        await asyncio.sleep(0.005)
    if monotonic:
        assert [went_back(heads) for heads in seen] == [0, 0]
        assert h.balancer.groups["default"].heads.held > 0
    else:  # (the same fleet shows the head going back: the test has teeth)
        assert went_back(seen[0]) > 0


async def test_status_and_metrics_show_the_head_held(harness: Any) -> None:
    from rpcbalancer.proxy.gateway import HttpRequest

    h = await harness(fleet(), chain="evm", strategy="round_robin", hedge={"enabled": False})
    seen = await poll(h, "eth_blockNumber", 30, "evm", 5)
    await h.call("eth_getBalance", ["0x" + "ab" * 20, "finalized"])
    status = await h.gateway.handle(HttpRequest("GET", "/status.json", peer="127.0.0.1"))
    (floor,) = orjson.loads(status.body)["balancer"]["floors"]
    assert floor["group"] == "default" and floor["head"] == max(seen)
    assert floor["finalized"] is not None and floor["finalized"] < floor["head"]
    metrics = await h.gateway.handle(HttpRequest("GET", "/metrics", peer="127.0.0.1"))
    (line,) = [
        line
        for line in metrics.body.decode().splitlines()
        if line.startswith('rpcbalancer_head_floor{group="default"}')
    ]
    assert float(line.split()[-1]) == max(seen)
