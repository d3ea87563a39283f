"""Metrics and status views that need no server: merging worker counters, labels, history."""

from __future__ import annotations

from rpcbalancer.config import from_mapping
from rpcbalancer.fleet.fleet import Fleet
from rpcbalancer.fleet.nodes import LATENCY_BUCKETS, Health, Node
from rpcbalancer.health.store import ProbeRecord
from rpcbalancer.observe.counters import merge
from rpcbalancer.observe.views import history_doc


def snapshot(pid: int, requests: int, tries: int, inflight: int) -> dict:
    hist = [0] * (len(LATENCY_BUCKETS) + 1)
    hist[0] = tries
    return {
        "pid": pid,
        "requests": [["m", "ok", requests], ["other", "timeout", 1]],
        "duration": hist,
        "duration_sum": 0.5,
        "bytes_in": 10,
        "bytes_out": 20,
        "hedges": 1,
        "hedge_wins": 0,
        "retries": 2,
        "nodes": {
            "a": {"tries": tries, "failures": 1, "hist": hist, "sum": 0.1,
                  "ejected_by": {"breaker": 1}, "inflight": inflight},
        },
    }  # fmt: skip


def test_worker_counters_add_up() -> None:
    total = merge([snapshot(1, 5, 7, 2), snapshot(2, 3, 4, 1)])
    assert total["workers"] == 2
    assert total["requests"] == {("m", "ok"): 8, ("other", "timeout"): 2}
    assert total["duration"][0] == 11 and total["duration_sum"] == 1.0
    assert (total["bytes_in"], total["bytes_out"], total["retries"]) == (20, 40, 4)
    node = total["nodes"]["a"]
    assert (node["tries"], node["failures"], node["inflight"]) == (11, 2, 3)
    assert node["hist"][0] == 11 and node["ejected_by"] == {"breaker": 2}


def test_history_is_bucketed_per_node_with_median_and_good_share() -> None:
    config = from_mapping({"nodes": ["http://a:1", "http://b:2"]}, env={})
    fleet = Fleet([Node(i, spec) for i, spec in enumerate(config.nodes)], Health())
    records = [
        ProbeRecord(node="http://a:1", at=1000.0 + t, ok=True, latency=0.010 * (1 + t % 3))
        for t in range(0, 60, 2)
    ] + [
        ProbeRecord(node="http://b:2", at=1000.0 + t, ok=t % 4 == 0, latency=0.05)
        for t in range(0, 60, 2)
    ]
    doc = history_doc(records, fleet, since=0.0, until=1060.0, buckets=6)
    assert doc["since"] == 999.0  # a short history is spread over the whole chart
    a, b = doc["nodes"]["http://a:1"], doc["nodes"]["http://b:2"]
    assert len(a) == 6 and all(10.0 <= p[1] <= 30.0 for p in a)
    assert all(0.0 < p[2] < 1.0 for p in b)  # about half of b's probes failed
    assert all(p[1] == 50.0 for p in b)
