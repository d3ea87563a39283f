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

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..fleet.fleet import EXCLUSION_KINDS
from ..fleet.nodes import LATENCY_BUCKETS
from . import doctorlai
from .counters import SnapshotFolder, Stats, merge

if TYPE_CHECKING:
    from .source import Observed

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(balancer: Observed, stats: Stats, folder: SnapshotFolder | None) -> bytes:
    """The Prometheus text exposition of everything this server counts and knows now."""
    from prometheus_client import CollectorRegistry, generate_latest

    snapshots = [stats.snapshot(balancer.fleet.nodes)]
    if folder is not None:
        snapshots += list(folder.others())
    registry = CollectorRegistry(auto_describe=False)
    totals = merge(snapshots)
    registry.register(_Collector(balancer, totals))
    if balancer.config.compat == "doctorlai":  # its dashboards' names too
        registry.register(_Families(doctorlai.families, balancer, totals))
    return bytes(generate_latest(registry))


class _Families:
    def __init__(self, make: Any, balancer: Observed, totals: dict[str, Any]) -> None:
        self.make, self.balancer, self.totals = make, balancer, totals

    def collect(self) -> Iterator[Any]:
        yield from self.make(self.balancer, self.totals)


class _Collector:
    def __init__(self, balancer: Observed, totals: dict[str, Any]) -> None:
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
        info.add_metric([__version__, b.chain.name, b.routing.name], 1)
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
            (
                "rpcbalancer_heads_held",
                "heads_held",
                "Answers reporting a head behind one told before, replaced by that one",
            ),
            (
                "rpcbalancer_heavy_refused",
                "heavy_refused",
                "Calls refused for asking more than one call may (a route's limit)",
            ),
            (
                "rpcbalancer_heads_released",
                "heads_released",
                "Answers reporting a head behind one told before, passed on after hold_for",
            ),
        ):
            yield CounterMetricFamily(name, text, value=t[key])
        resent = CounterMetricFamily(
            "rpcbalancer_broadcasts_resent",
            "Broadcasts sent again after their node failed them (or to several nodes at once), "
            "by how they ended: the request's outcome, or duplicate (already had, a success)",
            labels=["ending"],
        )
        for ending, count in sorted(t["resent"].items()):
            resent.add_metric([ending], count)
        yield resent
        floor = GaugeMetricFamily(
            "rpcbalancer_head_floor",
            "The head each group holds: the highest one its answers reported or showed "
            "(this process's; with a shared Redis, settled with the others')",
            labels=["group"],
        )
        for view in b.floors_view:
            if view["head"] is not None:
                floor.add_metric([view["group"]], view["head"])
        yield floor
        yield from _websocket(t["websocket"], GaugeMetricFamily, CounterMetricFamily)
        yield from _overload(t["overload"], GaugeMetricFamily, CounterMetricFamily)

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
            for cause in ("breaker", "outlier", "integrity", "quorum"):
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
        yield from self._cache(CounterMetricFamily, GaugeMetricFamily)
        yield from self._health(GaugeMetricFamily, CounterMetricFamily)

    def _cache(self, counter: Any, gauge: Any) -> Iterator[Any]:
        """The answer cache: events by method, and its size in this process."""
        cache = self.balancer.answer_cache
        if cache is None:
            return
        events = counter(
            "rpcbalancer_cache_events",
            "Answer cache events by JSON-RPC method (common ones; others: other): hit, miss, "
            "coalesced, bypass, stored, skipped",
            labels=["method", "event"],
        )
        for (method, event), count in sorted(self.totals["cache"].items()):
            events.add_metric([method, event], count)
        yield events
        memory = cache.memory
        yield counter(
            "rpcbalancer_cache_unlinked",
            "Irreversible blocks not kept: they did not link to the blocks kept beside them "
            "(their node is ejected, cause integrity)",
            value=cache.broken,
        )
        yield counter(
            "rpcbalancer_cache_evictions",
            "Answers evicted from this process's cache to stay within cache.max_bytes",
            value=memory.evictions,
        )
        yield gauge(
            "rpcbalancer_cache_bytes", "Bytes of answers cached in this process", value=memory.bytes
        )
        yield gauge("rpcbalancer_cache_items", "Answers cached in this process", value=len(memory))

    def _health(self, gauge: Any, counter: Any) -> Iterator[Any]:
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
        group = gauge(
            "rpcbalancer_node_group",
            "1 for the group of backends each node serves in",
            labels=["node", "group"],
        )
        for node in fleet.nodes:
            group.add_metric([node.name, node.group], 1.0)
            excluded = fleet.excluded(node, now, best)
            kind = "usable" if excluded is None else excluded.kind
            for option in ("usable", *EXCLUSION_KINDS):
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
        yield from (state, up, probe_latency, probe_age, head, lag, group)
        yield counter(
            "rpcbalancer_forks_found",
            "Times a node was found on a fork: its head block's hash not the majority's "
            "(it is excluded, state forked, until it is on their chain again)",
            value=fleet.forks_found,
        )
        routes = gauge(
            "rpcbalancer_route",
            "1 for each configured route: its method prefix and the group it names",
            labels=["prefix", "group"],
        )
        for route in b.routes_view:
            routes.add_metric([route["prefix"], route.get("upstream", "")], 1.0)
        yield routes
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


WEBSOCKET_GAUGES = {
    "connections": "Open WebSocket connections",
    "subscriptions": "Subscriptions held by WebSocket clients",
}
WEBSOCKET_EVENTS = (
    "opened",
    "refused",
    "slow_readers",
    "ping_timeouts",
    "subscribed",
    "notifications",
    "switches",
    "upstream_sockets",
    "filled_heads",
    "filled_logs",
)


def _websocket(counts: dict[str, int], gauge: Any, counter: Any) -> Iterator[Any]:
    """The WebSocket families: connections and subscriptions now, messages, and events
    (connections opened and refused, slow readers closed, pongs missed, subscriptions made,
    notifications sent, switches of node, heads and logs filled after a gap)."""
    for key, text in WEBSOCKET_GAUGES.items():
        yield gauge(f"rpcbalancer_websocket_{key}", text, value=max(0, counts.get(key, 0)))
    messages = counter(
        "rpcbalancer_websocket_messages", "WebSocket messages by direction", labels=["direction"]
    )
    messages.add_metric(["in"], counts.get("messages_in", 0))
    messages.add_metric(["out"], counts.get("messages_out", 0))
    yield messages
    events = counter(
        "rpcbalancer_websocket_events",
        "WebSocket and subscription events: connections opened and refused, slow readers "
        "and pings unanswered closed, subscriptions made, notifications sent, node switches, "
        "sockets opened to nodes, heads and logs filled after a gap",
        labels=["event"],
    )
    for event in WEBSOCKET_EVENTS:
        events.add_metric([event], counts.get(event, 0))
    yield events


def _overload(counts: dict[str, int], gauge: Any, counter: Any) -> Iterator[Any]:
    """The workers' admission by load: requests in flight and workers shedding now, sheds
    begun, and requests refused by reason (a standing queue, too many in flight)."""
    yield gauge(
        "rpcbalancer_overload_inflight",
        "Requests being answered (admitted, not yet answered), all workers",
        value=max(0, counts.get("inflight", 0)),
    )
    yield gauge(
        "rpcbalancer_overload_shedding",
        "Workers refusing new requests now for a standing queue",
        value=max(0, counts.get("shedding", 0)),
    )
    yield counter(
        "rpcbalancer_overload_sheds",
        "Times a worker began refusing new requests for a standing queue",
        value=counts.get("sheds", 0),
    )
    refused = counter(
        "rpcbalancer_overload_refused",
        "Requests refused at once for overload (503, Retry-After), by reason",
        labels=["reason"],
    )
    refused.add_metric(["queue"], counts.get("refused_queue", 0))
    refused.add_metric(["inflight"], counts.get("refused_inflight", 0))
    yield refused
