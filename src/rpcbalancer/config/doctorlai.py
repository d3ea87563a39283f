"""Read the ``config.yaml`` of DoctorLai/steem-load-balancer unchanged.

That project (the Node.js successor of the original Lambda design) races health checks on
every request and then applies a strategy among the answers. Its keys map onto ours; keys
with no counterpart here are listed in one warning, so a user switching over sees exactly
what is not carried across.
"""

from __future__ import annotations

import logging
from typing import Any

from .urls import display_url

log = logging.getLogger(__name__)

# Keys that exist only in DoctorLai's format; one of them marks a file as theirs.
_MARKERS = frozenset(
    {
        "timeout",
        "retry_count",
        "max_jussi_number_diff",
        "min_blockchain_version",
        "port",
        "rateLimit",
        "circuitBreaker",
        "weights",
        "sticky",
        "rejectUnauthorized",
        "sslCertPath",
        "sslKeyPath",
        "plimit",
        "firstK",
        "max_age",
        "logging",
        "max_payload_size",
        "logging_max_body_len",
        "loggging_max_body_len",
        "version",
        "debug",
        "weighted_routing",
    }
)

_STRATEGIES = {
    "first": "first",
    "random": "random",
    "max_jussi_number": "max_block",
    "latest_version": "latest_version",
    "lowest_latency": "fastest",
    "weighted": "weighted",
}

# Accepted and deliberately not carried over, with the reason a user is told.
_IGNORED = {
    "max_age": "answers are not cached",
    "logging": "use log_level",
    "logging_max_body_len": "bodies are never logged",
    "loggging_max_body_len": "bodies are never logged",
    "max_payload_size": "not enforced yet",
    "plimit": "probes run in the background with their own concurrency (probe.concurrency)",
    "firstK": "probes run in the background, not per request",
    "sticky": "nodes are chosen from background probes, so no per-client choice is cached",
    "debug": "use log_level: debug",
    "weighted_routing": "probes run in the background, in no order; weights act in the strategy",
}


def is_doctorlai(data: dict[str, Any]) -> bool:
    """Whether ``data`` is DoctorLai's format. Its ``cache: {enabled, ttl}`` (the chosen node
    remembered for ttl seconds) is told from our answer cache by its ``ttl``."""
    cache = data.get("cache")
    return bool(_MARKERS & data.keys()) or (isinstance(cache, dict) and "ttl" in cache)


def from_doctorlai(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Translate a DoctorLai configuration mapping into ours (our own keys pass through)."""
    out = {k: v for k, v in data.items() if k not in _MARKERS and k != "headers"}
    if isinstance(data.get("cache"), dict) and "ttl" in data["cache"]:
        del out["cache"]  # theirs: the chosen node remembered (see below), not answers
    ignored: list[str] = []

    weights = data.get("weights") or {}
    verify = data.get("rejectUnauthorized", True) is not False
    shared, by_url = _split_headers(data.get("headers"))
    if isinstance(data.get("nodes"), list):
        nodes = []
        for entry in data["nodes"]:
            if not isinstance(entry, str | dict):
                nodes.append(entry)  # not a node: validation says so, naming the entry
                continue
            node = {"url": entry} if isinstance(entry, str) else dict(entry)
            url = node.get("url")
            if isinstance(weights, dict) and url in weights:
                node.setdefault("weight", weights[url])
            own = by_url.pop(_same_url(url), None) if isinstance(url, str) else None
            if shared or own:
                given = node.get("headers")
                given = given if isinstance(given, dict) else {}
                node["headers"] = {**shared, **(own or {}), **given}
            if not verify:
                node.setdefault("verify_tls", False)
            nodes.append(node)
        out["nodes"] = nodes
    ignored += [f"headers for {display_url(url)} (not one of the nodes)" for url in by_url]
    if not verify:
        log.warning(
            "%s: rejectUnauthorized is false: TLS certificates of nodes are NOT verified", source
        )

    # Values of the wrong type are passed on untouched: validation then names the key.
    timeouts = dict(out["timeouts"]) if isinstance(out.get("timeouts"), dict) else {}
    if isinstance(data.get("timeout"), int | float) and data["timeout"] > 0:
        per_try = data["timeout"] / 1000.0
        timeouts.setdefault("per_try", per_try)
        timeouts.setdefault("connect", min(per_try, 2.0))
    if isinstance(data.get("retry_count"), int):
        # Theirs counts tries, ours counts re-tries after the first.
        out.setdefault("retries", max(0, min(10, data["retry_count"] - 1)))
    retries, per_try_given = out.get("retries", 2), timeouts.get("per_try", 5.0)
    numbers = isinstance(retries, int) and isinstance(per_try_given, int | float)
    if timeouts and numbers and isinstance(out.get("timeouts", {}), dict):
        tries = 1 + retries
        per_try = float(per_try_given)
        timeouts.setdefault("total", max(per_try, min(per_try * tries, 30.0)))
        out["timeouts"] = timeouts

    strategy = data.get("strategy")
    if isinstance(strategy, str):
        out["strategy"] = {"name": _STRATEGIES.get(strategy, strategy)}
    cache = data.get("cache")
    if isinstance(cache, dict) and cache.get("enabled") is True:
        chosen = out.get("strategy")
        ttl = cache.get("ttl") or 3
        if (
            isinstance(chosen, dict)
            and chosen.get("name") == "race"
            and isinstance(ttl, int | float)
        ):
            chosen["race_ttl"] = float(ttl)
        else:
            ignored.append("cache (answers are not cached; the node choice comes from probes)")

    if "max_jussi_number_diff" in data:
        out.setdefault("max_block_lag", data["max_jussi_number_diff"])
    if data.get("min_blockchain_version"):
        out.setdefault("min_version", str(data["min_blockchain_version"]))
    listen = dict(out["listen"]) if isinstance(out.get("listen"), dict) else {}
    if "port" in data:
        listen["port"] = data["port"]
    if data.get("sslCertPath") and data.get("sslKeyPath"):
        listen.update(tls_cert=data["sslCertPath"], tls_key=data["sslKeyPath"])
    if listen and not (out.get("listen") is not None and not isinstance(out["listen"], dict)):
        out["listen"] = listen
    if isinstance(data.get("user_agent"), str):
        out.setdefault("user_agent", data["user_agent"])
    rate = data.get("rateLimit")
    if isinstance(rate, dict):
        out["rate_limit"] = {
            k2: rate[k1]
            for k1, k2 in (("windowMs", "window_ms"), ("maxRequests", "max_requests"))
            if k1 in rate
        }
    breaker = data.get("circuitBreaker")
    if isinstance(breaker, dict) and breaker.get("enabled", True) is not False:
        mapped: dict[str, Any] = {}
        if "failureThreshold" in breaker:
            mapped["failures"] = breaker["failureThreshold"]
        if isinstance(breaker.get("cooldownMs"), int | float):
            mapped["cooldown"] = breaker["cooldownMs"] / 1000.0
        out["circuit_breaker"] = mapped

    out.setdefault("compat", "doctorlai")  # its monitoring finds what it looks for
    if "version" in data:  # (an unset ${VAR} is "" there, as its own reader makes it)
        version = data["version"]
        out.setdefault("deployment_version", "" if version is None else str(version))
    ignored += [f"{key} ({why})" for key, why in _IGNORED.items() if key in data]
    if ignored:
        log.warning("%s: DoctorLai config keys not carried over: %s", source, "; ".join(ignored))
    return out


def _same_url(url: str) -> str:
    """A node URL as the ``headers`` mapping is matched against it (a trailing ``/`` aside)."""
    return url.strip().rstrip("/")


def _split_headers(headers: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """DoctorLai's ``headers`` maps a node URL to the headers sent to that node alone:
    ``(headers for every node, {node URL: its own headers})``. A plain ``name: value``
    entry (no URL) goes to every node."""
    if not isinstance(headers, dict):
        return {}, {}
    shared = {k: v for k, v in headers.items() if not isinstance(v, dict)}
    by_url = {_same_url(str(k)): v for k, v in headers.items() if isinstance(v, dict)}
    return shared, by_url
