"""Overload: a worker past its cap on requests in flight refuses the next ones at once (503,
Retry-After, a JSON-RPC error), answers those it took, and serves again as soon as they
are done; the refusals are counted in /status.json and /metrics, and health and metrics
are answered however busy the worker is. (The queue-time rule, and goodput under an open
loop at 1.5x and 3x a worker's capacity, are measured by bench/overload.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread

CALL = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "id": 7}


@pytest.fixture
def slow_fleet() -> Iterator[FleetThread]:
    with FleetThread({"slow": Behaviour(latency=0.6)}) as running:
        yield running


def test_past_its_cap_a_worker_refuses_at_once_and_serves_again_after(
    slow_fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process(
        {
            "nodes": [slow_fleet["slow"].url],
            "overload": {"max_inflight": 3, "retry_after": 2},
            "hedge": {"enabled": False},
        }
    )
    ended: list[tuple[float, int, dict[str, Any], str | None]] = []
    lock = threading.Lock()

    def call() -> None:
        r = requests.post(lb.url, json=CALL, timeout=10)
        with lock:
            ended.append((time.monotonic(), r.status_code, r.json(), r.headers.get("retry-after")))

    first = [threading.Thread(target=call) for _ in range(3)]
    for t in first:
        t.start()
    time.sleep(0.2)  # the three are at the node (it answers after 0.6 s)
    rest = [threading.Thread(target=call) for _ in range(7)]
    for t in rest:
        t.start()
    # While the worker is full, its health and metrics are still answered.
    assert requests.get(f"{lb.url}/status.json", timeout=5).json()["balancer"]["overload"]
    for t in first + rest:
        t.join(15)
    served = [e for e in ended if e[1] == 200]
    refused = [e for e in ended if e[1] == 503]
    assert len(served) == 3 and len(refused) == 7
    assert all(e[2]["result"]["head_block_number"] > 0 for e in served)
    # Each refusal came before any of the answers it could not wait for.
    assert max(e[0] for e in refused) < min(e[0] for e in served)
    for _, _, body, retry in refused:
        assert retry == "2"
        assert body["id"] is None and "Overloaded" in body["error"]["message"]
    # Free again: served at once.
    again = requests.post(lb.url, json=CALL, timeout=10)
    assert again.status_code == 200 and again.json()["id"] == 7
    time.sleep(0.05)  # (the gauges are read every 10 ms)
    status = requests.get(f"{lb.url}/status.json", timeout=5).json()["balancer"]["overload"]
    assert status["refused_inflight"] == 7 and status.get("refused_queue", 0) == 0
    assert status["inflight"] == 0 and status["shedding"] == 0  # every one counted out
    metrics = requests.get(f"{lb.url}/metrics", timeout=5).text
    assert 'rpcbalancer_overload_refused_total{reason="inflight"} 7.0' in metrics
