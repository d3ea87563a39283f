"""Metrics: plain counters on the hot path, Prometheus text at scrape time.

Counting a request must cost next to nothing, so the hot path only bumps integers: the
gateway's :class:`Stats` (requests by method and outcome, their duration, bytes, hedges,
retries) and each :class:`~rpcbalancer.nodes.Node` (tries, their latency histogram,
ejections by cause). ``prometheus-client`` comes in only when ``/metrics`` is scraped: a
collector turns the counters, and gauges read from the live state (in flight, probe
results, exclusion, the store), into metric families.

Several workers (``serve --workers N``) each count their own requests. Each writes a
snapshot of its counters to a shared folder every second (``RPCBALANCER_METRICS_DIR``, made
by the supervisor); the worker that answers a scrape adds the other live workers' latest
snapshots to its own counters, so a scrape sees the whole server whichever worker gets it.
Counters of a worker that died drop out (Prometheus' ``rate`` treats that as a reset).

Labels are bounded: a method is a label only when the chain preset (or ``metrics.methods``)
names it, anything else counts as ``other``; nodes come from the config.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..fleet.nodes import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ..balancer import Balancer
    from ..jsonrpc import RpcCall

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = (
    "ok",
    "client_error",
    "rate_limited",
    "denied",
    "no_node",
    "timeout",
    "upstream_error",
    "internal",
)
KINDS = ("ejected", "down", "lagging", "stale_head", "old_version")


def exclusion_kind(reason: str | None) -> str:
    """A bounded label for :meth:`Fleet.exclusion`'s free-text reason."""
    if reason is None:
        return "usable"
    if reason.startswith("ejected"):
        return "ejected"
    if reason.startswith("down"):
        return "down"
    if "blocks behind" in reason:
        return "lagging"
    if reason.startswith("head block"):
        return "stale_head"
    return "old_version"


class Stats:
    """What the gateway counts, per process."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "duration_sum",
        "hedge_wins",
        "hedges",
        "methods",
        "requests",
        "retries",
    )

    def __init__(self, methods: Iterable[str]) -> None:
        self.methods = frozenset(methods)
        self.requests: dict[tuple[str, str], int] = {}
        self.duration = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.retries = 0

    def method_label(self, call: RpcCall | None) -> str:
        if call is None:
            return "GET"
        if call.batch:
            return "batch"
        method = call.methods[0] if call.methods else ""
        return method if method in self.methods else "other"

    def snapshot(self, balancer: Balancer) -> dict[str, Any]:
        """The counters of this process (JSON-able), gateway and nodes."""
        return {
            "pid": os.getpid(),
            "at": time.time(),
            "requests": [[m, o, n] for (m, o), n in self.requests.items()],
            "duration": list(self.duration),
            "duration_sum": self.duration_sum,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "retries": self.retries,
            "nodes": {
                n.name: {
                    "tries": n.requests,
                    "failures": n.failures,
                    "hist": list(n.hist),
                    "sum": n.latency_sum,
                    "ejected_by": dict(n.ejected_by),
                    "inflight": n.inflight,
                }
                for n in balancer.fleet.nodes
            },
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes added up."""
    total: dict[str, Any] = {
        "workers": 0,
        "requests": {},
        "duration": [0] * (len(LATENCY_BUCKETS) + 1),
        "duration_sum": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
        "hedges": 0,
        "hedge_wins": 0,
        "retries": 0,
        "nodes": {},
    }
    for snap in snapshots:
        total["workers"] += 1
        for method, outcome, count in snap["requests"]:
            total["requests"][method, outcome] = total["requests"].get((method, outcome), 0) + count
        total["duration"] = _add(total["duration"], snap["duration"])
        for key in ("duration_sum", "bytes_in", "bytes_out", "hedges", "hedge_wins", "retries"):
            total[key] += snap[key]
        for name, node in snap["nodes"].items():
            into = total["nodes"].setdefault(
                name,
                {
                    "tries": 0,
                    "failures": 0,
                    "hist": [0] * len(node["hist"]),
                    "sum": 0.0,
                    "ejected_by": {},
                    "inflight": 0,
                },
            )
            for key in ("tries", "failures", "sum", "inflight"):
                into[key] += node[key]
            into["hist"] = _add(into["hist"], node["hist"])
            for cause, count in node["ejected_by"].items():
                into["ejected_by"][cause] = into["ejected_by"].get(cause, 0) + count
    return total


def _add(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


class SnapshotFolder:
    """The shared folder of worker snapshots (one file per worker, replaced atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.mine = self.folder / f"worker-{os.getpid()}.json"

    def write(self, snapshot: dict[str, Any]) -> None:
        partial = self.mine.with_suffix(".partial")
        partial.write_text(json.dumps(snapshot))
        partial.replace(self.mine)

    def others(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.folder.glob("worker-*.json")):
            if path == self.mine:
                continue
            try:
                snap: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if _alive(int(snap.get("pid", 0))):
                yield snap

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.mine.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(balancer: Balancer, stats: Stats, folder: SnapshotFolder | None) -> bytes:
    """The Prometheus text exposition of everything this server counts and knows now."""
    from prometheus_client import CollectorRegistry, generate_latest

    snapshots = [stats.snapshot(balancer)]
    if folder is not None:
        snapshots += list(folder.others())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(balancer, merge(snapshots)))
    return bytes(generate_latest(registry))


class _Collector:
    def __init__(self, balancer: Balancer, totals: dict[str, Any]) -> None:
        self.balancer = balancer
        self.totals = totals

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        t = self.totals
        b = self.balancer
        info = GaugeMetricFamily(
            "rpcbalancer_info",
            "The balancer's version, chain and the strategy routing now",
            labels=["version", "chain", "strategy"],
        )
        info.add_metric([__version__, b.chain.name, b.router.policy.name], 1)
        yield info
        yield GaugeMetricFamily(
            "rpcbalancer_workers", "Worker processes counted in this scrape", value=t["workers"]
        )

        requests = CounterMetricFamily(
            "rpcbalancer_requests",
            "Client requests by JSON-RPC method (common ones; others: other) and outcome",
            labels=["method", "outcome"],
        )
        for (method, outcome), count in sorted(t["requests"].items()):
            requests.add_metric([method, outcome], count)
        yield requests
        yield _histogram(
            HistogramMetricFamily,
            "rpcbalancer_request_duration_seconds",
            "Time from a client request parsed to its answer ready",
            [],
            [([], t["duration"], t["duration_sum"])],
        )
        traffic = CounterMetricFamily(
            "rpcbalancer_bytes", "Request and answer bodies", labels=["direction"]
        )
        traffic.add_metric(["in"], t["bytes_in"])
        traffic.add_metric(["out"], t["bytes_out"])
        yield traffic
        for name, key, text in (
            ("rpcbalancer_hedges", "hedges", "Hedged reads (a second node asked)"),
            ("rpcbalancer_hedge_wins", "hedge_wins", "Hedged reads the second node answered"),
            ("rpcbalancer_retries", "retries", "Retries on another node after a failed try"),
        ):
            yield CounterMetricFamily(name, text, value=t[key])

        nodes = t["nodes"]
        tries = CounterMetricFamily(
            "rpcbalancer_node_tries",
            "Requests sent to each node, by outcome",
            labels=["node", "outcome"],
        )
        ejections = CounterMetricFamily(
            "rpcbalancer_node_ejections",
            "Ejections of each node, by cause",
            labels=["node", "cause"],
        )
        inflight = GaugeMetricFamily(
            "rpcbalancer_node_inflight", "Requests in flight to each node", labels=["node"]
        )
        for name, node in nodes.items():
            tries.add_metric([name, "ok"], node["tries"] - node["failures"])
            tries.add_metric([name, "error"], node["failures"])
            for cause in ("breaker", "outlier"):
                ejections.add_metric([name, cause], node["ejected_by"].get(cause, 0))
            inflight.add_metric([name], node["inflight"])
        yield tries
        yield _histogram(
            HistogramMetricFamily,
            "rpcbalancer_node_try_duration_seconds",
            "Latency of the tries sent to each node (failed ones too)",
            ["node"],
            [([name], node["hist"], node["sum"]) for name, node in nodes.items()],
        )
        yield ejections
        yield inflight
        yield from self._health(GaugeMetricFamily)

    def _health(self, gauge: Any) -> Iterator[Any]:
        b = self.balancer
        now = b.clock()
        fleet = b.fleet
        best = fleet.best_head()
        state = gauge(
            "rpcbalancer_node_state",
            "1 for each node's state now: usable, or why it is excluded",
            labels=["node", "state"],
        )
        up = gauge("rpcbalancer_probe_up", "The last probe found the node up", labels=["node"])
        probe_latency = gauge(
            "rpcbalancer_probe_latency_seconds", "Latency of the last probe", labels=["node"]
        )
        probe_age = gauge(
            "rpcbalancer_probe_age_seconds", "Seconds since the last probe", labels=["node"]
        )
        head = gauge("rpcbalancer_node_head_block", "Head block number seen", labels=["node"])
        lag = gauge("rpcbalancer_node_block_lag", "Blocks behind the best node", labels=["node"])
        for node in fleet.nodes:
            kind = exclusion_kind(fleet.exclusion(node, now, best))
            for option in ("usable", *KINDS):
                state.add_metric([node.name, option], 1.0 if option == kind else 0.0)
            probe = node.probe
            if probe is None:
                continue
            up.add_metric([node.name], 1.0 if probe.ok else 0.0)
            probe_latency.add_metric([node.name], probe.latency)
            probe_age.add_metric([node.name], max(0.0, now - probe.at))
            if probe.head_block is not None:
                head.add_metric([node.name], probe.head_block)
            behind = fleet.lag(node, best)
            if behind is not None:
                lag.add_metric([node.name], behind)
        yield from (state, up, probe_latency, probe_age, head, lag)
        if b.view is not None:
            yield gauge(
                "rpcbalancer_store_up",
                "The health store answered its last read",
                value=0.0 if b.view.health.down else 1.0,
            )
            if b.view.fresh_at:
                yield gauge(
                    "rpcbalancer_store_record_age_seconds",
                    "Age of the newest canary record read from the store",
                    value=max(0.0, time.time() - b.view.fresh_at),
                )


Series = list[tuple[list[str], list[int], float]]
"""A histogram's label values, bucket counts (not cumulative) and sum, per labelled series."""


def _histogram(family: Any, name: str, text: str, labels: list[str], series: Series) -> Any:
    metric = family(name, text, labels=labels)
    bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
    for values, counts, total in series:
        running = 0
        buckets = []
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            buckets.append((bound, running))
        metric.add_metric(values, buckets, total)
    return metric
