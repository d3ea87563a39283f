"""The plan of one call: which group serves it, with what TTL, timeout and retries, whether it
is a broadcast, its cache key, and what is sent (sans-IO).

Planning reads the method the way routes do (:mod:`.routes`: jussi's and drone's naming,
``equivalent_methods``, ``translate_to_appbase``) and resolves its route. Everything but the
cache key depends on the method alone unless a route matches parameters (``params=``) or the
method is ``call``: that part is worked out once per method and kept (a bounded memo), so that
planning the usual call is a dictionary hit. A balancer with one group and no routes plans the
same way: its one group is every call's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..cache.policy import default_ttl
from ..config import Config
from ..config.ttl import NO_CACHE
from ..health.chains import Chain
from ..jsonrpc import called, dumps
from .group import Group
from .routes import LEGACY, Renamer, Route, RouteRule, RouteTable, canonical, name_of, preset_rules
from .routes import translated as to_appbase

MEMO_SIZE: Final = 4096
"""Methods whose plan is kept (clients choose method names: bounded)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What routing decides for a method, its parameters aside."""

    parts: tuple[str, ...]
    """The method as routes read it: ``("appbase", "condenser_api", "get_block")``."""
    method: str
    """What the node is sent (renamed or translated, or as asked)."""
    route: Route
    group: Group
    ttl: float
    broadcast: bool
    rewritten: bool
    """The member is sent under another name (renamed or translated)."""
    groups: tuple[str, ...]
    """The group's name, as the context carries it."""
    prefix: str
    """The cache key's start: the group and the dotted name."""
    label: str
    """The method as a metric label: as the client asked it (a ``call`` unwrapped), when it
    is a known one, else ``other``."""
    keyed: bool
    """Whether the call needs a key: the cache may keep it, coalescing may share it, or its
    group holds the head it reports."""
    reports_head: bool = False
    """It answers with the head block, and its group holds the head (:mod:`.heads`)."""
    resend: int = 0
    """A broadcast that may go to another node when its fate is unknown (``NEVER``,
    ``AGAIN``, ``CONFIRMED``: :mod:`..health.chains.base`), as ``broadcast.resend`` allows."""
    limit: int = 0
    """The most one call may ask for (the route's ``limit``, else the chain preset's cap for
    the method); 0: no limit."""
    split: int = 0
    """Blocks per chunk when a query over more is split across nodes (:mod:`.split`); 0:
    never split."""
    pins: bool = False
    """It may read at a block tag, and its group resolves tags to numbers (:mod:`.heads`)."""
    follows_writes: bool = True
    """After the client's broadcast, it goes where the broadcast went (:mod:`.writes`): a
    broadcast, or a read that may see what a transaction changed."""


class Plan:
    """One call, planned: its shape, and what depends on its parameters."""

    __slots__ = ("broadcast", "group", "key", "member", "params", "parts", "shape", "ttl")

    def __init__(self, shape: Shape, params: Any, member: dict[str, Any], key: str) -> None:
        self.shape = shape
        self.group = shape.group
        self.ttl = shape.ttl
        self.broadcast = shape.broadcast
        self.parts = shape.parts
        self.params = params
        """The call's own parameters (a ``call``'s third element)."""
        self.member = member
        """The member to send (rewritten when the method was renamed or translated)."""
        self.key = key
        """The cache's and coalescing's key: group, method and parameters in one canonical
        spelling, never the request id; empty when neither needs one (the cache and
        coalescing off, or a broadcast)."""

    def __repr__(self) -> str:
        shape = self.shape
        return f"<Plan {shape.method} -> {self.group.name} ttl={self.ttl} {shape.route.prefix!r}>"

    def body(self) -> bytes:
        """The member's bytes, when it must be sent re-encoded (renamed or translated)."""
        return dumps(self.member)

    def pinned(self, nodes: list[Any]) -> tuple[dict[str, Any], int] | None:
        """The member with its block tags resolved among ``nodes`` (:meth:`.HeadFloor.
        resolve`), and the highest block it reads at; None when it goes as asked."""
        heads = self.group.heads
        if heads is None:
            return None
        found = heads.chain.pinned(
            self.parts[-1], self.params, lambda tag: heads.resolve(tag, nodes)
        )
        if found is None:
            return None
        member = dict(self.member)
        member["params"] = found[0]
        return member, found[1]


class Planner:
    def __init__(
        self,
        config: Config,
        chain: Chain,
        groups: dict[str, Group],
        labels: frozenset[str],
        coalesce: bool,
    ) -> None:
        """``labels``: the methods counted under their own name (:class:`~..observe.counters.
        Stats`); ``coalesce``: whether identical reads in flight are shared."""
        self.chain = chain
        self.legacy = LEGACY.get(config.chain) if config.chain != "evm" else None
        self.groups = groups
        self.labels = labels
        self.caching = config.cache.enabled
        self.resending = config.broadcast.resend
        self.coalesce = coalesce
        rules = preset_rules(self.legacy, list(groups)) if config.preset_routes else []
        rules += [  # after the preset's: the same prefix configured replaces the preset's
            RouteRule(
                prefix,
                r.upstream,
                r.ttl,
                r.timeout,
                r.retries,
                r.limit,
                (r.quorum.ask, r.quorum.agree) if r.quorum is not None else None,
                r.split,
            )
            for prefix, r in config.routes.items()
        ]
        self.default = next(iter(groups.values()))
        self.routes = RouteTable(rules, self.default.name)
        self.renamer = Renamer(config.equivalent_methods, self.legacy)
        self.translates = {n for n, g in groups.items() if g.spec.translate_to_appbase}
        self._shapes: dict[str, Shape] = {}
        bare = Shape(
            parts=("",),
            method="",
            route=Route(self.default.name),
            group=self.default,
            ttl=NO_CACHE,
            broadcast=False,
            rewritten=False,
            groups=(self.default.name,),
            prefix="",
            label="GET",
            keyed=False,
        )
        self.bare = Plan(bare, None, {}, "")
        """The plan of what is not a JSON-RPC call (``GET /``, a forwarded path): the default
        group's, never cached."""

    def __repr__(self) -> str:
        return f"<Planner {list(self.groups)} {len(self.routes)} routes>"

    def plan(self, member: dict[str, Any]) -> Plan:
        method: str = member["method"]
        params = member.get("params")
        if method == "call" or self.routes.by_params:  # the route depends on the params
            shape, params = self._shape(method, params)
        else:  # everything but the key depends on the method alone: worked out once
            known = self._shapes.get(method)
            if known is None:
                known = self._shape(method, None)[0]
                if len(self._shapes) >= MEMO_SIZE:
                    self._shapes.clear()
                self._shapes[method] = known
            shape = known
            if shape.rewritten and params is None:
                params = []
        if shape.rewritten:
            original = member
            member = {"jsonrpc": "2.0", "method": shape.method, "params": params}
            if "id" in original:
                member["id"] = original["id"]
        key = shape.prefix + canonical(params) if shape.keyed else ""
        return Plan(shape, params, member, key)

    def refusal(self, plan: Plan) -> str | None:
        """Why the call asks for more than one call may (the route's ``limit``, else the
        chain preset's cap), or None."""
        limit = plan.shape.limit
        name = plan.parts[-1]
        head = plan.group.fleet.best_head()
        asked = self.chain.asks(name, plan.params, head)
        if asked is None or asked <= limit:
            return None
        return (
            f"{name} asks for {asked} in one call; this endpoint allows at most {limit} "
            "(split the request, or ask its operator about the route's limit)"
        )

    def span(self, plan: Plan) -> tuple[int, int] | None:
        """The blocks a call spans, its tags resolved at the group's best head."""
        return self.chain.span(plan.parts[-1], plan.params, plan.group.fleet.best_head())

    def _shape(self, method: str, params: Any) -> tuple[Shape, Any]:
        """How a method is routed (and the params it is sent with)."""
        name = name_of(method, params, self.legacy)
        asked = called(method, params)
        if self.renamer:
            name = self.renamer.rename(name)
        route = self.routes.resolve(name)
        rewritten = name.method != method
        if route.group in self.translates and self.legacy and name.parts[0] == self.legacy:
            name = to_appbase(name, self.legacy)
            route = self.routes.resolve(name)  # routed again under its appbase name
            rewritten = True
        group = self.groups[route.group]
        sent = name.method if rewritten else method
        chain = self.chain
        # A broadcast under any spelling: as sent, as asked (``api.method``, a ``call``
        # unwrapped), or the method alone (a legacy name, a ``call`` to a numbered API).
        parts = name.parts
        broadcast = (
            chain.is_broadcast(sent)
            or chain.is_broadcast(".".join(parts[-2:]))
            or chain.is_broadcast(parts[-1])
        )
        reports_head = group.heads is not None and chain.reports_head(parts[-1])
        ttl = route.ttl
        if ttl is None or broadcast:
            ttl = default_ttl(chain.name, name.parts, broadcast)
        shape = Shape(
            parts=name.parts,
            method=sent,
            route=route,
            group=group,
            ttl=ttl,
            broadcast=broadcast,
            rewritten=rewritten,
            groups=(group.name,),
            prefix=f"{group.name}\x1f{name.dotted}\x1f",
            label=asked if asked in self.labels else "other",
            keyed=(self.caching and ttl != NO_CACHE)
            or (self.coalesce and not broadcast)
            or reports_head,
            reports_head=reports_head,
            resend=chain.resend(parts) if broadcast and self.resending else 0,
            limit=chain.cap(parts[-1]) if route.limit is None else route.limit,
            split=chain.chunk(parts[-1]) if route.split is None else route.split,
            pins=group.heads is not None and not broadcast and chain.tagged(parts[-1]),
            follows_writes=broadcast or chain.sees_writes(parts[-1]),
        )
        return shape, name.params
