"""Read-only views of the fleet, for /health, /status.json, the status page and the CLI."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..fleet.fleet import Fleet, FleetSet
from ..fleet.nodes import Node
from ..health.store import ProbeRecord, shown_url

if TYPE_CHECKING:
    from .source import Observed


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def node_view(fleet: Fleet | FleetSet, node: Node, now: float, best: int | None) -> dict[str, Any]:
    reason = fleet.exclusion(node, now, best)
    probe = node.probe
    return {
        "name": node.name,
        "group": node.group,
        "state": "usable" if reason is None else "excluded",
        "reason": reason,
        "weight": node.weight,
        "latency_ms": {
            "predicted": _ms(node.predicted(now)),
            "alone": _ms(node.model.level),
            "ewma": _ms(node.ewma),
            "p50": _ms(node.percentile(0.5)),
            "p99": _ms(node.percentile(0.99)),
            "probe_skew": round(math.exp(node.latencies.probe_skew), 3),
        },
        "inflight": node.inflight,
        "requests": node.requests,
        "failures": node.failures,
        "error_rate": round(node.error_rate(), 4),
        "consecutive_failures": node.breaker.consecutive_failures,
        "head_block": probe.head_block if probe else None,
        "lag": fleet.lag(node, best),
        "head_age_s": (
            round(probe.head_age + (now - probe.at), 1)
            if probe is not None and probe.head_age is not None
            else None
        ),
        "version": probe.version if probe else None,
        "probe": None
        if probe is None
        else {
            "ok": probe.ok,
            "age_s": round(now - probe.at, 1),
            "latency_ms": _ms(probe.latency),
            "error": probe.error,
        },
        "last_error": node.last_error,
    }


def health_doc(fleet: Fleet | FleetSet, now: float) -> tuple[bool, dict[str, Any]]:
    best = fleet.best_head()
    nodes = []
    usable = 0
    for node in fleet.nodes:
        reason = fleet.exclusion(node, now, best)
        usable += reason is None
        nodes.append({"name": node.name, "usable": reason is None, "reason": reason})
    ok = usable > 0
    return ok, {"status": "ok" if ok else "unavailable", "usable": usable, "nodes": nodes}


def status_doc(balancer: Observed) -> dict[str, Any]:
    """Everything the status page shows, now: the balancer, each node, and why the current
    choice is what it is (each usable node's score under the policy routing now)."""
    fleet = balancer.fleet
    now = balancer.clock()
    best = fleet.best_head()
    usable, failopen = fleet.candidates(now)
    policy = balancer.routing
    total = sum(n.requests for n in fleet.nodes) or 1
    nodes = []
    choice: tuple[float, str] | None = None
    for node in fleet.nodes:
        view = node_view(fleet, node, now, best)
        view["share"] = round(node.requests / total, 4)
        score, why = policy.explain(node, now)
        view["score"] = None if score is None else round(score, 6)
        view["why"] = why
        usable_now = node in usable and not failopen
        if usable_now and score is not None and (choice is None or score < choice[0]):
            choice = (score, node.name)
        nodes.append(view)
    store = None
    if balancer.view is not None and balancer.store is not None:
        fresh = balancer.view.fresh_at
        store = {
            "url": shown_url(balancer.store.url),
            "up": not balancer.view.health.down,
            "record_age_s": round(time.time() - fresh, 1) if fresh else None,
        }
    stats = balancer.stats
    return {
        "balancer": {
            "version": __version__,
            "chain": balancer.chain.name,
            "strategy": policy.name,
            "how": policy.how,
            "configured_strategy": balancer.policy.name,
            "choice": choice[1] if choice is not None else None,
            "uptime_s": round(time.time() - balancer.started_at, 1),
            "pid": os.getpid(),  # which worker answered, under ``serve --workers N``
            "best_head_block": best,
            "usable": 0 if failopen else len(usable),
            "failing_open": failopen,
            "store": store,
            "requests": sum(stats.requests.values()),
            "hedges": stats.hedges,
            "retries": stats.retries,
            "heads_held": stats.heads_held,
            "heads_released": stats.heads_released,
            "broadcasts_resent": dict(stats.resent),
            "heavy_refused": stats.heavy_refused,
            "read_your_writes_clients": None if balancer.writes is None else len(balancer.writes),
            "groups": _groups(fleet, now),
            "floors": balancer.floors_view,
            "websocket": {**stats.websocket, "topics": balancer.subscriptions_view},
            "overload": dict(stats.overload),
            "routes": balancer.routes_view,
            "names": balancer.names_view,
            "cache": _cache(balancer),
        },
        "nodes": nodes,
    }


def _groups(fleet: Fleet | FleetSet, now: float) -> list[dict[str, Any]]:
    fleets = fleet.fleets if isinstance(fleet, FleetSet) else {"default": fleet}
    out = []
    for name, members in fleets.items():
        usable, failopen = members.candidates(now)
        out.append(
            {
                "name": name,
                "nodes": len(members.nodes),
                "usable": 0 if failopen else len(usable),
                "failing_open": failopen,
            }
        )
    return out


def _cache(balancer: Observed) -> dict[str, Any] | None:
    cache = balancer.answer_cache
    if cache is None:
        return None
    totals = cache.totals()
    asked = totals["hit"] + totals["miss"] + totals["coalesced"]
    return {
        **totals,
        "hit_ratio": round(totals["hit"] / asked, 4) if asked else None,
        "items": len(cache.memory),
        "bytes": cache.memory.bytes,
        "max_bytes": cache.config.max_bytes,
        "unlinked": cache.broken,
        "shared": None if cache.shared is None else cache.shared.down_since is None,
    }


def history_doc(
    records: list[ProbeRecord],
    fleet: Fleet | FleetSet,
    *,
    since: float,
    until: float,
    buckets: int = 60,
) -> dict[str, Any]:
    """The canary's history as a chart wants it: per node and per time bucket, the median
    probe latency of the good probes and the share of probes that were good. A history
    shorter than the window (a new deployment) is spread over the whole chart."""
    if records:
        since = max(since, min(r.at for r in records) - 1.0)
    width = max(1.0, (until - since) / buckets)
    names = {node.key: node.name for node in fleet.nodes}
    grouped: dict[str, list[list[ProbeRecord]]] = {
        name: [[] for _ in range(buckets)] for name in names.values()
    }
    for record in records:
        name = names.get(record.node)
        if name is None or not since <= record.at <= until:
            continue
        grouped[name][min(buckets - 1, int((record.at - since) / width))].append(record)
    series: dict[str, list[list[float | None]]] = {}
    for name, slots in grouped.items():
        points: list[list[float | None]] = []
        for i, slot in enumerate(slots):
            if not slot:
                continue
            good = sorted(r.latency for r in slot if r.ok)
            p50 = good[len(good) // 2] * 1000 if good else None
            points.append([round(since + (i + 0.5) * width, 1), p50, len(good) / len(slot)])
        series[name] = points
    return {"since": since, "until": until, "bucket_s": width, "nodes": series}
