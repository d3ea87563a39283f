"""Read drone's ``config.yaml`` (openhive-network/drone, Hive's API gateway) unchanged.

drone names its ``backends`` and maps method prefixes to them (``urls``), with ``ttls``
(seconds, or ``NO_CACHE``, ``NO_EXPIRE``, ``EXPIRE_IF_REVERSIBLE``), ``timeouts``,
``equivalent_methods``, ``translate_to_appbase`` (namespaces) and its own ``drone:`` block
(port, address, cache size...). Here each backend is a group, each prefix a route, and the
cache is on, as it always is in drone. The backend that serves ``appbase`` comes first: it
is probed with the chain preset's calls and serves what no route names; the others are
judged by their answers alone. Keys with no meaning here are named in one warning.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# drone: key -> why it is not carried over (the others are mapped below)
_DRONE_IGNORED = {
    "operator_message": "GET / is the nodes' own status page here",
    "middleware_connection_threads": "connections are pooled per node",
    "add_jussi_headers": "answers carry X-RPC-Node, X-RPC-Upstream and X-Cache",
    "access_log_flush_every_line": "the access log is written every second",
    "debug_endpoints_enabled": "no debug endpoints",
    "metrics_namespace": "metric names start with rpcbalancer_",
}


def is_drone(data: dict[str, Any]) -> bool:
    return isinstance(data.get("backends"), dict) and isinstance(data.get("drone"), dict)


def from_drone(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Translate a drone config mapping into ours (other keys of ours pass through)."""
    mine = (
        "drone",
        "backends",
        "urls",
        "ttls",
        "timeouts",
        "translate_to_appbase",
        "equivalent_methods",
    )
    out = {k: v for k, v in data.items() if k not in mine}
    out.setdefault("chain", "hive")
    ignored: list[str] = []
    backends: dict[str, Any] = dict(data["backends"])
    urls: dict[str, Any] = data["urls"] if isinstance(data.get("urls"), dict) else {}
    routes: dict[str, dict[str, Any]] = {}
    for prefix, backend in urls.items():
        routes.setdefault(str(prefix), {})["upstream"] = backend
    for prefix, ttl in (data.get("ttls") or {}).items():
        if ttl == "HONOR_UPSTREAM_CACHE_CONTROL":
            ignored.append(f"ttls.{prefix}: HONOR_UPSTREAM_CACHE_CONTROL (not cached)")
            ttl = "NO_CACHE"
        routes.setdefault(str(prefix), {})["ttl"] = ttl
    for prefix, seconds in (data.get("timeouts") or {}).items():
        routes.setdefault(str(prefix), {})["timeout"] = seconds
    out["routes"] = {**routes, **(out.get("routes") or {})}
    out.setdefault("preset_routes", False)  # their routes are the whole story

    translate = set(data.get("translate_to_appbase") or [])
    first = urls.get("appbase") or next(iter(backends), None)
    order = [first] if first in backends else []
    order += [name for name in backends if name not in order]
    upstreams: dict[str, Any] = {}
    for name in order:
        group: dict[str, Any] = {
            "nodes": [backends[name]],
            "probe": "chain" if name == first else "passive",
        }
        # drone translates by namespace: a group gets it when it serves one listed.
        if any(urls.get(ns) == name for ns in translate):
            group["translate_to_appbase"] = True
        upstreams[str(name)] = group
    out["upstreams"] = upstreams
    if data.get("equivalent_methods"):
        out["equivalent_methods"] = data["equivalent_methods"]

    block = data["drone"]
    listen = dict(out.get("listen") or {})
    if "port" in block:
        listen["port"] = block["port"]
    if "hostname" in block:
        listen["host"] = block["hostname"]
    out["listen"] = listen
    cache: dict[str, Any] = {"enabled": True}
    if isinstance(block.get("cache_max_capacity"), int):
        cache["max_bytes"] = block["cache_max_capacity"]
    out["cache"] = {**cache, **(out.get("cache") or {})}
    if "metrics_enabled" in block:
        out.setdefault("metrics", {})["enabled"] = bool(block["metrics_enabled"])
    if block.get("metrics_path", "/metrics") != "/metrics":
        ignored.append("drone.metrics_path (metrics are served at /metrics)")
    if block.get("access_log_file"):
        out.setdefault("access_log", {})["path"] = block["access_log_file"]
    if block.get("access_log_format", "json") != "json":
        ignored.append("drone.access_log_format (the access log is JSON lines)")
    if block.get("add_cors_headers") is False:
        ignored.append("drone.add_cors_headers (CORS headers are always sent)")
    ignored += [f"drone.{key} ({why})" for key, why in _DRONE_IGNORED.items() if key in block]
    known = {
        "port",
        "hostname",
        "cache_max_capacity",
        "metrics_enabled",
        "metrics_path",
        "access_log_file",
        "access_log_format",
        "add_cors_headers",
        *_DRONE_IGNORED,
    }
    ignored += [f"drone.{key} (unknown)" for key in block if key not in known]
    if ignored:
        log.warning("%s: drone config keys not carried over: %s", source, "; ".join(ignored))
    return out
