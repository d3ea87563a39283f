"""Read jussi's JSON config (``DEV_config.json``, steemit/jussi) unchanged.

jussi lists ``upstreams``, each a namespace with ``[prefix, value]`` pairs for ``urls``,
``ttls``, ``timeouts`` and (in its schema only) ``retries``, and a ``translate_to_appbase``
flag. Here every distinct URL becomes a group of backends and every prefix a route, with the
same meanings (jussi's ``0`` TTL: forever, ``-1``: never cached, ``-2``: forever once the
block is irreversible; a ``0`` timeout: no limit). The group that serves the chain's root
(``appbase``, else the legacy ``steemd``) comes first: it is probed with the chain preset's
calls and serves whatever no route names; the others (hivemind, account history) are judged
by their answers alone. ``params=`` prefixes match as jussi meant them to (jussi itself
compares their text, so its own samples never match). Keys with no meaning here are named in
one warning.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_KNOWN = ("name", "urls", "ttls", "timeouts", "retries", "translate_to_appbase")


_ACCOUNT_HISTORY = (
    "appbase.condenser_api.get_account_history",
    "appbase.account_history_api.get_account_history",
    "steemd.database_api.get_account_history",
)
"""Every spelling of get_account_history, as routes name them."""


def is_jussi(data: dict[str, Any]) -> bool:
    upstreams = data.get("upstreams")
    return (
        isinstance(upstreams, list)
        and bool(upstreams)
        and all(isinstance(u, dict) and "urls" in u for u in upstreams)
    )


def _pairs(entries: Any, value_key: str) -> list[tuple[str, Any]]:
    """``[prefix, value]`` pairs, or jussi's object form ``{prefix, <value_key>}``."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, list | tuple) and len(entry) == 2:
            out.append((str(entry[0]), entry[1]))
        elif isinstance(entry, dict) and "prefix" in entry:
            out.append((str(entry["prefix"]), entry.get(value_key)))
    return out


def from_jussi(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Translate a jussi config mapping into ours (other keys of ours pass through)."""
    out = {k: v for k, v in data.items() if k not in ("upstreams", "limits")}
    ignored: list[str] = []
    urls: dict[str, str] = {}  # prefix -> URL
    routes: dict[str, dict[str, Any]] = {}
    translate: set[str] = set()
    roots: dict[str, str] = {}  # namespace -> URL of its root prefix
    for upstream in data["upstreams"]:
        name = str(upstream.get("name", ""))
        for prefix, url in _pairs(upstream.get("urls"), "upstream_url"):
            urls[prefix] = str(url)
            if prefix == name:
                roots[name] = str(url)
        for prefix, ttl in _pairs(upstream.get("ttls"), "upstream_ttl"):
            routes.setdefault(prefix, {})["ttl"] = ttl
        for prefix, seconds in _pairs(upstream.get("timeouts"), "upstream_timeout"):
            routes.setdefault(prefix, {})["timeout"] = seconds
        for prefix, count in _pairs(upstream.get("retries"), "upstream_retries"):
            routes.setdefault(prefix, {})["retries"] = count
        if upstream.get("translate_to_appbase") is True:
            translate.add(name)
        extra = sorted(set(upstream) - set(_KNOWN))
        ignored += [f"upstreams[{name}].{key}" for key in extra]

    # One group per URL: the chain's root first (it serves what no route names).
    first = roots.get("appbase") or roots.get("steemd") or roots.get("hived")
    order = [first] if first else []
    order += [u for u in dict.fromkeys(urls.values()) if u not in order]
    names: dict[str, str] = {}
    for url in order:
        named = next(
            (ns for ns, root in roots.items() if root == url and ns not in names.values()), None
        )
        names[url] = named or (urlsplit(url).netloc or url)
    upstreams: dict[str, dict[str, Any]] = {}
    for url in order:
        group: dict[str, Any] = {"nodes": [url], "probe": "chain" if url == first else "passive"}
        if any(roots.get(ns) == url for ns in translate):
            group["translate_to_appbase"] = True
        upstreams[names[url]] = group
    for prefix, url in urls.items():
        routes.setdefault(prefix, {})["upstream"] = names[url]
    out["upstreams"] = upstreams
    out["routes"] = {**routes, **(out.get("routes") or {})}
    out.setdefault("preset_routes", False)  # their routes are the whole story
    out["cache"] = {"enabled": True, **(out.get("cache") or {})}  # as jussi always caches

    limits = data.get("limits")
    if isinstance(limits, dict):
        history = limits.get("account_history_limit")
        if isinstance(history, int) and not isinstance(history, bool) and history >= 0:
            # jussi refuses a get_account_history asking for more; so does the route limit.
            for prefix in _ACCOUNT_HISTORY:
                routes = out["routes"]
                routes[prefix] = {**routes.get(prefix, {}), "limit": history}
        ignored += [
            f"limits.{key} (no such limit here: use methods.deny or api_keys)"
            for key in limits
            if key != "account_history_limit"
        ]
    if ignored:
        log.warning("%s: jussi config keys not carried over: %s", source, "; ".join(ignored))
    return out
