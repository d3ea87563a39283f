"""Where monitoring written for DoctorLai/steem-load-balancer looks (``compat: doctorlai``).

An operator switching from that project keeps its scripts and dashboards: served with its
configuration (read unchanged: :mod:`..config.doctorlai`), rpcbalancer answers

* ``GET /`` as it does: the node's own status page (jussi's) with ``status_code``, the
  original Lambda's ``__server__`` and ``__version__``, and the selection, servers, config
  and counters it shows (``__selected__``, ``__servers__``, ``__ip__``, ``__config__``,
  ``__first_k_candidates__``, ``__load_balancer_version__``, ``__stats__``), and its ``IP``,
  ``Server``, ``Version`` and ``LoadBalancerVersion`` headers;
* ``/health`` as ``{"status": "OK", "uptime_seconds": ...}`` (always 200, as its is);
* ``/version`` with the configuration's ``version``;
* ``/metrics`` also under its names (``steem_lb_requests_total``, ``steem_lb_node_access_total``,
  ...), beside ours.

Its numbers map onto ours: a node's accesses are its tries, its errors the failed ones; "not
chosen", "behind" and "timed out" count the probes that found the node down, lagging, or
silent; the requests per second are taken from the request counter once a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..fleet.nodes import Node

if TYPE_CHECKING:
    from .source import Observed


def label(balancer: Observed) -> str:
    """This deployment's version as its operator named it (DoctorLai's ``version``)."""
    return balancer.config.deployment_version or "NA"


def total_requests(balancer: Observed) -> int:
    return sum(balancer.stats.requests.values())


def _uptime(seconds: float) -> dict[str, int]:
    s = int(seconds)
    return {
        "years": s // (365 * 86400),
        "months": s % (365 * 86400) // (30 * 86400),
        "days": s % (30 * 86400) // 86400,
        "hours": s % 86400 // 3600,
        "minutes": s % 3600 // 60,
        "seconds": s % 60,
    }


def health_doc(balancer: Observed) -> dict[str, Any]:
    """DoctorLai's ``/health`` (always answered 200: the process is up)."""
    up = time.time() - balancer.started_at
    return {
        "status": "OK",
        "version": label(balancer),
        "uptime": _uptime(up),
        "uptime_seconds": int(up),
        "total_requests": total_requests(balancer),
        "nodes": [node.url for node in balancer.fleet.nodes],
        "circuit_breaker": breakers(balancer),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "rpcbalancer": __version__,
    }


def breakers(balancer: Observed) -> dict[str, dict[str, Any]]:
    now = balancer.clock()
    return {
        node.url: {
            "failures": node.breaker.consecutive_failures,
            "open": node.breaker.is_open(now),
        }
        for node in balancer.fleet.nodes
    }


def _version_reply(node: Node) -> Any:
    """The node's version answer as DoctorLai shows it (the whole JSON-RPC reply)."""
    probe = node.probe
    doc = probe.version_doc if probe is not None else None
    if isinstance(doc, dict) and "result" in doc:
        return doc
    return {"id": 0, "jsonrpc": "2.0", "result": doc}


def _candidate(node: Node, now: float) -> dict[str, Any]:
    probe = node.probe
    latency = node.latency(now) if probe is not None else None
    return {
        "server": node.url,
        "version": _version_reply(node),
        "jussi_number": node.head(),
        "latencyMs": round(latency * 1000, 2) if latency is not None else None,
        "timestamp": int((time.time() - (now - probe.at if probe else 0.0)) * 1000),
    }


def index_doc(
    balancer: Observed, upstream: Any, status: int, node: Node | None, client_ip: str
) -> dict[str, Any]:
    """DoctorLai's ``GET /``: the node's page (``upstream``) with what it adds."""
    now = balancer.clock()
    config = balancer.config
    doc: dict[str, Any] = dict(upstream) if isinstance(upstream, dict) else {"raw": upstream}
    usable, _ = balancer.fleet.candidates(now)
    candidates = sorted(usable, key=lambda n: n.latency(now) or 0.0)
    total = total_requests(balancer)
    up = time.time() - balancer.started_at
    access, errors = {}, {}
    for n in balancer.fleet.nodes:
        if n.requests:
            share = round(100 * n.requests / max(total, 1), 2)
            access[n.url] = {"percent": share, "count": n.requests}
        if n.failures:
            rate = n.failures / n.requests if n.requests else 1.0
            errors[n.url] = {
                "errRate": round(rate, 3),
                "total": n.requests,
                "errorCount": n.failures,
                "succRate": round(1 - rate, 3),
            }
    limit = config.rate_limit
    doc.update(
        {
            "status_code": status,
            "__server__": node.url if node is not None else None,
            "__version__": _version_reply(node) if node is not None else None,
            "__selected__": _candidate(node, now) if node is not None else None,
            "__servers__": [n.url for n in balancer.fleet.nodes],
            "__ip__": client_ip,
            "__config__": {
                "strategy": balancer.policy.name,
                "firstK": len(candidates),
                "timeout": int(config.timeouts.per_try * 1000),
                "user_agent": config.user_agent,
                "min_blockchain_version": config.min_version,
                "max_jussi_number_diff": config.max_block_lag,
                "cache_enabled": config.cache.enabled,
                "cache_ttl": 0,
                "sticky": False,
                "weighted_routing": balancer.policy.name == "weighted",
                "circuit_breaker_enabled": True,
            },
            "__first_k_candidates__": [_candidate(n, now) for n in candidates],
            "__load_balancer_version__": label(balancer),
            "__stats__": {
                "total": total,
                "rps": round(total / up, 2) if up >= 1 else 0,
                "rps_stats": balancer.rates.per_second() if balancer.rates is not None else {},
                "rate_limit": {  # (the bucket as its window: refilled in burst / rate)
                    "windowMs": int(1000 * limit.burst / limit.rate) if limit is not None else 0,
                    "maxRequests": limit.burst if limit is not None else 0,
                },
                "seconds": int(up),
                "uptime": {
                    "startTime": _iso(balancer.started_at),
                    "currentTime": _iso(time.time()),
                    **_singular(_uptime(up)),
                },
                "access_counters": access,
                "error_counters": errors,
                "not_chosen_counters": {n.url: n.probes_down for n in balancer.fleet.nodes},
                "jussi_behind_counters": {n.url: n.probes_behind for n in balancer.fleet.nodes},
                "timed_out_counters": {n.url: n.probes_silent for n in balancer.fleet.nodes},
                "circuit_breaker": breakers(balancer),
            },
        }
    )
    return doc


def _singular(uptime: dict[str, int]) -> dict[str, int]:
    """``__stats__.uptime`` names its years and months in the singular."""
    return {{"years": "year", "months": "month"}.get(k, k): v for k, v in uptime.items()}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


NODE_COUNTERS = {
    "node_access_total": "Requests routed to each node.",
    "node_error_total": "Forwarding errors per node (after retries).",
    "node_not_chosen_total": "Times a node failed the health check and was not chosen.",
    "node_jussi_behind_total": "Times a node was rejected for lagging jussi number.",
    "node_timed_out_total": "Times a node timed out during the health check.",
}


def _node_count(name: str, counted: dict[str, Any], node: Node) -> float:
    """A node's count under DoctorLai's name: its tries (every worker's, ``counted``), the
    failed ones, or its probes that found it down, lagging, or silent."""
    if name == "node_access_total":
        return float(counted["tries"])
    if name == "node_error_total":
        return float(counted["failures"])
    if name == "node_not_chosen_total":
        return float(node.probes_down)
    if name == "node_jussi_behind_total":
        return float(node.probes_behind)
    return float(node.probes_silent)


def families(balancer: Observed, totals: dict[str, Any]) -> Iterator[Any]:
    """DoctorLai's metric families (``steem_lb_*``), from the same counters as ours
    (``totals``: every worker's, added up)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily(
        "steem_lb_requests_total",
        "Total proxied requests.",
        value=sum(totals["requests"].values()),
    )
    yield GaugeMetricFamily(
        "steem_lb_uptime_seconds",
        "Process uptime in seconds.",
        value=time.time() - balancer.started_at,
    )
    best = balancer.fleet.best_head()
    if best is not None:
        yield GaugeMetricFamily(
            "steem_lb_max_jussi_number",
            "Highest jussi number observed across healthy nodes.",
            value=best,
        )
    per_node = totals["nodes"]
    by_node = {node.name: node for node in balancer.fleet.nodes}
    for name, help_text in NODE_COUNTERS.items():
        family = CounterMetricFamily(f"steem_lb_{name}", help_text, labels=["server"])
        for node_name, counted in per_node.items():
            node = by_node.get(node_name)
            if node is not None:
                family.add_metric([node.url], _node_count(name, counted, node))
        yield family
    rps = GaugeMetricFamily(
        "steem_lb_requests_per_second",
        "Requests per second over rolling windows.",
        labels=["window"],
    )
    rates = balancer.rates.per_second() if balancer.rates is not None else {}
    for window, per_second in rates.items():
        rps.add_metric([window], per_second)
    yield rps
    now = balancer.clock()
    breaker = GaugeMetricFamily(
        "steem_lb_circuit_breaker_open",
        "Whether a node's circuit breaker is currently open (1) or closed (0).",
        labels=["server"],
    )
    for node in balancer.fleet.nodes:
        breaker.add_metric([node.url], 1.0 if node.breaker.is_open(now) else 0.0)
    yield breaker
