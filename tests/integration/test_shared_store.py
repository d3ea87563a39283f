"""Many balancers, one canary, one shared store: real processes, a real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from rpcbalancer.health.store import ProbeRecord, open_store
from rpcbalancer.sim import FleetThread

from ..services import RedisServer

DGP = "condenser_api.get_dynamic_global_properties"


def store_records(url: str) -> tuple[dict[str, ProbeRecord], list[ProbeRecord]]:
    async def read() -> tuple[dict[str, ProbeRecord], list[ProbeRecord]]:
        store = open_store(url)
        await store.open()
        try:
            return await store.latest(), await store.history(0)
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(params=["redis", "postgres"])
def shared_store(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix=shared{time.time_ns()}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_balancers_route_away_from_a_node_only_the_canary_saw(
    fleet: FleetThread, balancer_process: Any, shared_store: str, tmp_path: Path
) -> None:
    store = shared_store
    nodes = [fleet[n].url for n in ("fast", "medium", "slow")]
    log = (tmp_path / "canary.log").open("wb")
    canary = subprocess.Popen(
        [sys.executable, "-m", "rpcbalancer", "canary", "--interval", "1s", "--store", store],
        env={**os.environ, "RPCBALANCER_NODES": ",".join(nodes)},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for(lambda: set(nodes) <= set(store_records(store)[0]), 15, "the canary's first round")
        config = {
            "nodes": nodes,
            "store": store,
            "canary": "external",
            "store_refresh": 0.2,
            "strategy": "round_robin",
            "probe": {"interval": 60},
            "cache": {"enabled": False},  # every call to a node: the routing is what counts
        }
        balancers = [balancer_process(config), balancer_process(config)]
        for lb in balancers:
            served = {lb.rpc(DGP, ident=i).headers["x-rpc-node"] for i in range(6)}
            assert fleet["medium"].url in served  # before: it gets its turn
        fleet.set("medium", lag=400)  # answers fine, but stale: only a probe can tell
        wait_for(
            lambda: (
                (store_records(store)[0][fleet["medium"].url].head_block or 0)
                < fleet["fast"].head() - 100
            ),
            10,
            "the canary to record the lag",
        )
        time.sleep(0.6)  # a few store-view refreshes
        for lb in balancers:
            served = {lb.rpc(DGP, ident=i).headers["x-rpc-node"] for i in range(30)}
            assert fleet["medium"].url not in served
            health = requests.get(lb.url + "/health", timeout=5).json()
            medium = next(n for n in health["nodes"] if n["name"] == fleet["medium"].url)
            assert "blocks behind" in medium["reason"]
    finally:
        canary.terminate()
        canary.wait(15)
        log.close()
    assert canary.returncode in (0, -15)


def test_a_redis_outage_fails_no_client_request(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        store = f"{redis.url}?prefix=outage"
        lb = balancer_process(
            {
                "nodes": [fleet[n].url for n in ("fast", "medium", "slow")],
                "store": store,
                "probe": {"interval": 0.5},
                "store_refresh": 0.2,
            }
        )
        errors: list[str] = []
        done = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                for i in range(2000):
                    if done.is_set():
                        return
                    resp = session.post(
                        lb.url,
                        data=orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": i}),
                        timeout=10,
                    )
                    if resp.status_code != 200 or "result" not in resp.json():
                        errors.append(resp.text)
                    time.sleep(0.002)

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(1.0)
        redis.stop()  # the store goes away mid-load
        time.sleep(1.5)
        redis.start()  # and comes back, empty (no persistence): the canary refills it
        wait_for(lambda: len(store_records(store)[0]) == 3, 15, "the canary to write again")
        done.set()
        worker.join(30)
        assert errors == []
        latest, history = store_records(store)
        assert all(isinstance(r, ProbeRecord) and r.node in latest for r in history)
        assert "unreachable" in lb.log and lb.log.count("unreachable") <= 3
        assert "reachable again" in lb.log
    finally:
        redis.stop()
