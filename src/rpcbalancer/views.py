"""Read-only views of the fleet, for /health, /status.json and the CLI's tables."""

from __future__ import annotations

import time
from typing import Any

from . import __version__
from .nodes import Fleet, Node


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def node_view(fleet: Fleet, node: Node, now: float, best: int | None) -> dict[str, Any]:
    reason = fleet.exclusion(node, now, best)
    probe = node.probe
    return {
        "name": node.name,
        "state": "usable" if reason is None else "excluded",
        "reason": reason,
        "weight": node.weight,
        "latency_ms": {
            "ewma": _ms(node.ewma),
            "p50": _ms(node.percentile(0.5)),
            "p99": _ms(node.percentile(0.99)),
        },
        "inflight": node.inflight,
        "requests": node.requests,
        "failures": node.failures,
        "error_rate": round(node.error_rate(), 4),
        "consecutive_failures": node.consecutive_failures,
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


def health_doc(fleet: Fleet, now: float) -> tuple[bool, dict[str, Any]]:
    best = fleet.best_head()
    nodes = []
    usable = 0
    for node in fleet.nodes:
        reason = fleet.exclusion(node, now, best)
        usable += reason is None
        nodes.append({"name": node.name, "usable": reason is None, "reason": reason})
    ok = usable > 0
    return ok, {"status": "ok" if ok else "unavailable", "usable": usable, "nodes": nodes}


def status_doc(
    fleet: Fleet, now: float, *, chain: str, strategy: str, started_at: float
) -> dict[str, Any]:
    best = fleet.best_head()
    _, failopen = fleet.candidates(now)
    return {
        "balancer": {
            "version": __version__,
            "chain": chain,
            "strategy": strategy,
            "uptime_s": round(time.time() - started_at, 1),
            "best_head_block": best,
            "failing_open": failopen,
        },
        "nodes": [node_view(fleet, n, now, best) for n in fleet.nodes],
    }
