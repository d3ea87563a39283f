"""The answer cache with real parts: two balancer processes sharing hits through a real Redis,
Redis killed and brought back under load (no request fails), and what the cache reports."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from rpcbalancer.sim import Behaviour, FleetThread

from ..services import RedisServer


def read(lb: Any, method: str, params: Any, ident: Any = 1) -> requests.Response:
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": ident}
    return requests.post(lb.url, json=body, timeout=10)


def test_two_balancers_share_hits_and_survive_redis_going_away(
    balancer_process: Any, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with FleetThread({"a": Behaviour(latency=0.003), "b": Behaviour(latency=0.003)}) as fleet:
            config = {
                "nodes": fleet.urls,
                "store": "none",
                "cache": {"enabled": True, "url": redis.url},
            }
            one, two = balancer_process(config), balancer_process(config)
            old = fleet["a"].head() - 200
            first = read(one, "condenser_api.get_block", [old], 1)
            assert first.headers["x-cache"] == "miss"
            time.sleep(0.3)  # the shared write is on its way
            shared = read(two, "condenser_api.get_block", [old], "two")
            assert shared.headers["x-cache"] == "hit"  # a hit the other balancer stored
            assert shared.json()["id"] == "two"
            assert shared.json()["result"] == first.json()["result"]

            redis.stop()  # Redis goes away under load: nothing fails
            blocks = [old - k for k in range(1, 200)]

            def ask(i: int) -> int:
                lb = one if i % 2 else two
                return read(lb, "condenser_api.get_block", [blocks[i % 60]], i).status_code

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(ask, range(240)))
            assert statuses.count(200) == len(statuses)
            redis.start()  # same port: it comes back
            time.sleep(5.5)  # the cache tries Redis again after a pause
            for i in range(5):
                assert read(one, "condenser_api.get_block", [old - 500 - i], i).status_code == 200
            time.sleep(1.2)
            for lb in (one, two):
                outages = [line for line in lb.log.splitlines() if "answer cache: Redis" in line]
                assert sum("unreachable" in line for line in outages) <= 1  # once, not per call
            assert "Redis" in one.log and "reachable again" in one.log
            metrics = requests.get(one.url + "/metrics", timeout=5).text
            assert 'rpcbalancer_cache_events_total{event="hit"' in metrics
    finally:
        redis.stop()


def test_groups_routes_and_the_cache_are_seen_in_status_metrics_and_top(
    balancer_process: Any,
) -> None:
    from .test_server import run_cli

    behaviours = {"chain": Behaviour(latency=0.002), "social": Behaviour(latency=0.002)}
    with FleetThread(behaviours, chains={"social": "hivemind"}) as fleet:
        lb = balancer_process(
            {
                "nodes": [fleet["chain"].url],
                "upstreams": {"hivemind": {"nodes": [fleet["social"].url], "probe": "passive"}},
                "routes": {"bridge": {"upstream": "hivemind", "ttl": 6}},
                "store": "none",
                "cache": {"enabled": True},
            }
        )
        for i in range(3):
            post = read(lb, "bridge.get_post", {"author": "a", "permlink": "p"}, i)
            assert post.headers["x-rpc-upstream"] == "hivemind"
        assert post.headers["x-cache"] == "hit"
        doc = requests.get(lb.url + "/status.json", timeout=5).json()
        groups = {g["name"]: g for g in doc["balancer"]["groups"]}
        assert groups["hivemind"]["nodes"] == 1 and groups["default"]["usable"] == 1
        routes = {r["prefix"]: r for r in doc["balancer"]["routes"]}
        assert routes["bridge"] == {"prefix": "bridge", "upstream": "hivemind", "ttl": 6.0}
        followers = routes["appbase.condenser_api.get_followers"]  # the chain preset's
        assert followers == {"prefix": followers["prefix"], "upstream": "hivemind", "preset": True}
        assert doc["balancer"]["cache"]["hit_ratio"] == round(2 / 3, 4)
        assert {n["group"] for n in doc["nodes"]} == {"default", "hivemind"}
        metrics = requests.get(lb.url + "/metrics", timeout=5).text
        assert (
            f'rpcbalancer_node_group{{group="hivemind",node="{fleet["social"].url}"}} 1.0'
            in metrics
        )
        assert 'rpcbalancer_route{group="hivemind",prefix="bridge"} 1.0' in metrics
        assert 'rpcbalancer_cache_events_total{event="hit",method="other"} 2.0' in metrics
        assert "rpcbalancer_cache_items 1.0" in metrics
        top = " ".join(run_cli("top", "--url", lb.url, "--once").stdout.split())
        assert "cache: 66.7% hits" in top and "groups: default 1/1, hivemind 1/1" in top
        followers = read(lb, "condenser_api.get_followers", ["a", None, "blog", 1], 9)
        assert followers.headers["x-rpc-upstream"] == "hivemind"  # the chain preset's route
        posts: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5  # the access log is written every second
        while len(posts) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            lines = [json.loads(x) for x in lb.log.splitlines() if x.startswith('{"ts"')]
            posts = [x for x in lines if x.get("method") == "bridge.get_post"]
        assert [x["cache"] for x in posts] == ["miss", "hit", "hit"]
        assert {x["upstream"] for x in posts} == {"hivemind"}
