"""Routes: which group of backends serves a method, and with what TTL, timeout and retries
(sans-IO).

A JSON-RPC method is read as a dotted name, the way jussi and drone read it, so that their
route prefixes mean the same here:

* ``condenser_api.get_block`` (``X_api.method``) -> ``appbase.condenser_api.get_block``;
* ``get_block`` (no dot) -> ``<legacy>.database_api.get_block``, where ``<legacy>`` is the
  chain's old namespace (``steemd``, ``hived``, ``blurtd``);
* ``call`` with ``[api, method, args]`` -> ``appbase.api.method`` when ``api`` is
  ``condenser_api`` or ``jsonrpc``, when ``args`` is an object or absent, else the legacy
  namespace (``0``/``1`` for ``api`` mean ``database_api``/``login_api``);
* ``bridge.get_post``, ``hive.db_head_state`` -> as they are (a namespace of its own);
* EVM methods (``eth_call``) -> as they are.

A route is the longest configured prefix over whole dotted parts (``appbase.condenser_api``
covers ``appbase.condenser_api.get_block`` but ``appbase.condenser_api.get_bl`` covers
nothing), looked up for each setting on its own, as jussi does: the group from the longest
prefix that names one, the TTL from the longest that sets one, and so on. A prefix may end in
``params=<json>`` to match one request's parameters exactly; unlike jussi, the JSON is compared
as data (key order, spacing and quoting aside), so ``get_state.params=['/trending']`` matches.

A group with ``translate_to_appbase`` forwards the legacy calls routed to it as
``condenser_api.<method>``, and ``equivalent_methods`` renames methods to one spelling; either
way the method is routed again under its new name, and the cache keys it by that name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..config.ttl import FOREVER, IF_IRREVERSIBLE, NO_CACHE

__all__ = [
    "FOREVER",
    "IF_IRREVERSIBLE",
    "NO_CACHE",
    "Name",
    "Renamer",
    "Route",
    "RouteRule",
    "RouteTable",
    "canonical",
    "name_of",
    "preset_rules",
    "translated",
]

LEGACY = {"steem": "steemd", "hive": "hived", "blurt": "blurtd"}
"""The namespace of a method without a dot, per chain preset."""
_NUMBERED_APIS = {0: "database_api", 1: "login_api"}


@dataclass(frozen=True, slots=True)
class Name:
    """A method as routes see it."""

    parts: tuple[str, ...]
    """``("appbase", "condenser_api", "get_block")``."""
    method: str
    """What the node is sent: ``condenser_api.get_block`` (a ``call`` is unwrapped only when
    the group translates it)."""
    params: Any
    """The call's own parameters (a ``call``'s third element)."""

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


def name_of(method: str, params: Any, legacy: str | None) -> Name:
    """How routes read ``method`` with ``params`` (``legacy``: the chain's old namespace, or
    None for chains without namespaces)."""
    if legacy is None:
        return Name((method,), method, params)
    if method == "call" and isinstance(params, list) and len(params) >= 2:
        api, inner = params[0], params[1]
        args = params[2] if len(params) > 2 else None
        if isinstance(api, int) and not isinstance(api, bool):
            api = _NUMBERED_APIS.get(api, str(api))
        api = str(api)
        appbase = len(params) == 2 or api in ("condenser_api", "jsonrpc") or isinstance(args, dict)
        namespace = "appbase" if appbase else legacy
        return Name((namespace, api, str(inner)), method, args if args is not None else [])
    pieces = method.split(".")
    if len(pieces) == 1:
        return Name((legacy, "database_api", method), method, params)
    if len(pieces) == 2 and (pieces[0].endswith("_api") or pieces[0] == "jsonrpc"):
        return Name(("appbase", *pieces), method, params)
    return Name(tuple(pieces), method, params)


def canonical(params: Any) -> str:
    """Parameters as one text whatever their spelling: compact JSON with object keys sorted
    at every depth (no key is ever dropped, big integers stay exact)."""
    if params is None:
        return "[]"
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Route:
    """What serves a method, and how."""

    group: str
    ttl: float | None = None
    """Seconds, :data:`FOREVER`, :data:`NO_CACHE`, :data:`IF_IRREVERSIBLE`, or None: the
    chain preset's default for the method."""
    timeout: float | None = None
    """Seconds a try may take (0: no limit but the request's own); None: the group's."""
    retries: int | None = None
    prefix: str = ""
    """The longest prefix that decided the group (for status and headers)."""
    limit: int | None = None
    """The most one call may ask for (items, blocks); None: the chain preset's cap, 0: none."""
    quorum: tuple[int, int] | None = None
    """``(ask, agree)``: the read goes to ``ask`` nodes, ``agree`` must give one answer."""
    split: int | None = None
    """Blocks per chunk of a wide log query; None: the preset's, 0: never split."""


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One configured prefix and what it sets (None: left to a shorter prefix)."""

    prefix: str
    group: str | None = None
    ttl: float | None = None
    timeout: float | None = None
    retries: int | None = None
    limit: int | None = None
    quorum: tuple[int, int] | None = None
    split: int | None = None


_PARAMS = re.compile(r"^(?P<head>.*?)\.params=(?P<json>.*)$", re.S)


def _split(prefix: str) -> tuple[tuple[str, ...], str | None]:
    """A prefix's dotted parts, and the canonical params it matches exactly (or None)."""
    match = _PARAMS.match(prefix)
    if match is None:
        return tuple(p for p in prefix.split(".") if p), None
    head, text = match.group("head"), match.group("json")
    try:
        value = json.loads(text)
    except ValueError:
        # jussi's own samples write Python's quoting: ['/trending']
        value = json.loads(text.replace("'", '"'))
    return tuple(p for p in head.split(".") if p), canonical(value)


SOCIAL_NAMESPACES = ("bridge", "hive", "follow_api", "tags_api")
"""What a hivemind serves whole: its own namespaces, and the follow and tags APIs."""
SOCIAL_CONDENSER = (
    "get_followers",
    "get_following",
    "get_follow_count",
    "get_content",
    "get_content_replies",
    "get_active_votes",
    "get_blog",
    "get_blog_entries",
    "get_feed",
    "get_feed_entries",
    "get_account_reputations",
    "get_reblogged_by",
    "get_trending_tags",
    "get_replies_by_last_update",
    "get_discussions_by_trending",
    "get_discussions_by_hot",
    "get_discussions_by_created",
    "get_discussions_by_promoted",
    "get_discussions_by_blog",
    "get_discussions_by_feed",
    "get_discussions_by_comments",
    "get_discussions_by_author_before_date",
    "get_post_discussions_by_payout",
    "get_comment_discussions_by_payout",
)
"""The social calls of ``condenser_api`` a hivemind answers (Steem's and Hive's)."""
HISTORY_CONDENSER = ("get_account_history", "get_ops_in_block", "get_transaction")
"""The account-history calls of ``condenser_api`` (hafah on Hive, an account-history node on
Steem)."""
SOCIAL_GROUP = "hivemind"
HISTORY_GROUPS = ("hafah", "account_history")


def preset_rules(legacy: str | None, groups: Sequence[str]) -> list[RouteRule]:
    """The chain preset's routes: to a group named ``hivemind`` the social calls (``bridge``,
    ``hive``, ``follow_api``, ``tags_api`` and the social ``condenser_api`` calls); to a group
    named ``hafah`` or ``account_history`` the account history (``account_history_api`` and
    its ``condenser_api`` calls). Nothing for a chain without namespaces (EVM), or without
    such groups. Configured routes for the same prefix replace these."""
    if legacy is None:
        return []
    rules: list[RouteRule] = []
    if SOCIAL_GROUP in groups:
        for namespace in SOCIAL_NAMESPACES:
            rules.append(RouteRule(namespace, SOCIAL_GROUP))
            if namespace.endswith("_api"):
                rules.append(RouteRule(f"appbase.{namespace}", SOCIAL_GROUP))
                rules.append(RouteRule(f"{legacy}.{namespace}", SOCIAL_GROUP))
        for method in SOCIAL_CONDENSER:
            rules.append(RouteRule(f"appbase.condenser_api.{method}", SOCIAL_GROUP))
            rules.append(RouteRule(f"{legacy}.database_api.{method}", SOCIAL_GROUP))
    history = next((g for g in HISTORY_GROUPS if g in groups), None)
    if history is not None:
        for prefix in ("appbase.account_history_api", f"{legacy}.account_history_api"):
            rules.append(RouteRule(prefix, history))
        for method in HISTORY_CONDENSER:
            rules.append(RouteRule(f"appbase.condenser_api.{method}", history))
            rules.append(RouteRule(f"{legacy}.database_api.{method}", history))
    return rules


class RouteTable:
    """The configured routes, resolved per method and parameters (see the module)."""

    def __init__(self, rules: Sequence[RouteRule], default_group: str) -> None:
        self.default_group = default_group
        self.rules = tuple(rules)
        self._by_prefix: dict[tuple[tuple[str, ...], str | None], RouteRule] = {}
        for rule in rules:
            self._by_prefix[_split(rule.prefix)] = rule
        self._depth = max((len(parts) for parts, _ in self._by_prefix), default=0)
        self.by_params = any(p is not None for _, p in self._by_prefix)
        """Whether some route matches parameters (``params=``): then a call's route depends
        on its params, not only on its method."""
        self._cache: dict[tuple[str, str | None], Route] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def resolve(self, name: Name) -> Route:
        """The route of ``name``: each setting from the longest prefix that sets it."""
        params = canonical(name.params) if self.by_params else None
        key = (name.dotted, params)
        route = self._cache.get(key)
        if route is not None:
            return route
        found: dict[str, Any] = {}
        parts = name.parts
        for length in range(min(len(parts), self._depth), -1, -1):
            head = parts[:length]
            for rule in (
                self._by_prefix.get((head, params)) if length == len(parts) else None,
                self._by_prefix.get((head, None)),
            ):
                if rule is None:
                    continue
                for attr in ("group", "ttl", "timeout", "retries", "limit", "quorum", "split"):
                    value = getattr(rule, attr)
                    if value is not None and attr not in found:
                        found[attr] = value
                        if attr == "group":
                            found["prefix"] = rule.prefix
        route = Route(
            group=found.get("group", self.default_group),
            ttl=found.get("ttl"),
            timeout=found.get("timeout"),
            retries=found.get("retries"),
            prefix=found.get("prefix", ""),
            limit=found.get("limit"),
            quorum=found.get("quorum"),
            split=found.get("split"),
        )
        if len(self._cache) >= 8192:  # clients choose methods: keep it bounded
            self._cache.clear()
        self._cache[key] = route
        return route


class Renamer:
    """``equivalent_methods``: several spellings of one method, routed and cached as one."""

    def __init__(self, equivalent: Mapping[str, Sequence[str]], legacy: str | None) -> None:
        self.legacy = legacy
        self._to: dict[str, str] = {}
        for destination, sources in equivalent.items():
            for source in sources:
                self._to[source] = destination

    def __bool__(self) -> bool:
        return bool(self._to)

    def rename(self, name: Name) -> Name:
        seen = {name.dotted}
        while (destination := self._to.get(name.dotted)) is not None:
            name = name_of(destination, name.params, self.legacy)
            if name.dotted in seen:
                break  # a rule that renames back: stop rather than loop
            seen.add(name.dotted)
        return name


def translated(name: Name, legacy: str | None) -> Name:
    """A legacy call as an appbase ``condenser_api`` call (``translate_to_appbase``)."""
    if legacy is None or not name.parts or name.parts[0] != legacy:
        return name
    method = name.parts[-1]
    params = name.params if name.params is not None else []
    return Name(("appbase", "condenser_api", method), f"condenser_api.{method}", params)
