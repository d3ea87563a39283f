"""Routes, the answer cache and coalescing: between admission and the routers.

Theory of operation
-------------------
When a balancer has more than one group of backends, routes, renamed methods or the answer
cache, the gateway hands each admitted call here instead of straight to a router:

* **one call**: its route gives the group (and TTL, timeout, retries). A read with a TTL is
  looked up in the cache (this process, then Redis when configured); a hit is answered at
  once with the client's own id. A miss joins an identical read already in flight
  (**coalescing**: one upstream call for all of them; each waiting client keeps its own
  deadline, and fails over on its own when the shared call fails) or goes to the group's
  router. Its answer is judged for the cache (:mod:`..cache.policy`) and kept.
* **a batch**: each member is routed and looked up on its own; the members answered from
  the cache stay here, the others go to their groups as smaller batches (ids rewritten so
  that the answers map back whatever order they come in; broadcast members make their batch
  a broadcast: never sent twice), all in parallel; the answers are put back in the order of
  the request, with the client's ids.

Without any of these, nothing here runs: the gateway forwards to the one router as before.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..cache import AnswerCache, Entry, Finality, default_ttl, has_result, result_of
from ..callbacks import Cancellable
from ..config.ttl import NO_CACHE
from ..errors import NoHealthyNode, UpstreamTimeout
from ..fleet.nodes import Node
from ..jsonrpc import Id, RpcCall, dumps, error_object
from ..messages import FAILURES, failure_of
from .forwarding import Outcome, ProxyRequest
from .router import Group
from .routes import (
    LEGACY,
    Name,
    Renamer,
    Route,
    RouteRule,
    RouteTable,
    canonical,
    name_of,
    preset_rules,
)
from .routes import translated as to_appbase

if TYPE_CHECKING:
    from ..config import Config
    from ..health.chains import Chain
    from ..observe.counters import Stats

log = logging.getLogger(__name__)

_LIB = re.compile(rb'"last_irreversible_block_num"\s*:\s*(\d+)')


@dataclass(slots=True)
class Plan:
    """One call, routed."""

    name: Name
    route: Route
    group: Group
    ttl: float
    broadcast: bool
    key: str
    member: dict[str, Any]
    """The member to send (rewritten when the method was renamed or translated)."""
    rewritten: bool


@dataclass(frozen=True, slots=True)
class Shape:
    """What routing a method decides, its params aside."""

    parts: tuple[str, ...]
    dotted: str
    method: str
    """The method sent (renamed or translated, or as asked)."""
    route: Route
    group: Group
    ttl: float
    broadcast: bool
    rewritten: bool


@dataclass(slots=True)
class Dispatched:
    """How a dispatched request ended, for the gateway to answer and count."""

    outcome: Outcome | None = None
    """A single call's forwarding (its answer passes as it is), or None."""
    body: bytes | None = None
    """An answer made here (a hit, a coalesced answer, a reassembled batch)."""
    status: int = 200
    groups: list[str] = field(default_factory=list)
    cache: str = ""
    """``hit``, ``miss``, ``coalesced``, ``bypass``, or empty (not cacheable)."""
    nodes: list[str] = field(default_factory=list)
    """The nodes that served (for the headers)."""


class Dispatcher:
    def __init__(
        self,
        config: Config,
        chain: Chain,
        groups: dict[str, Group],
        stats: Stats,
        clock: Callable[[], float],
    ) -> None:
        self.chain = chain
        self.stats = stats
        self.clock = clock
        self.legacy = LEGACY.get(config.chain) if config.chain != "evm" else None
        self.groups = groups
        rules = preset_rules(self.legacy, list(groups)) if config.preset_routes else []
        rules += [  # after the preset's: the same prefix configured replaces the preset's
            RouteRule(prefix, r.upstream, r.ttl, r.timeout, r.retries)
            for prefix, r in config.routes.items()
        ]
        self.routes = RouteTable(rules, next(iter(self.groups)))
        self.renamer = Renamer(config.equivalent_methods, self.legacy)
        self.cache = (
            AnswerCache(config.cache, config.chain, chain.block_interval, counts=stats.cache)
            if config.cache.enabled
            else None
        )
        self.coalesce = config.cache.coalesce and (config.cache.enabled or len(self.groups) > 1)
        self.inflight: dict[str, Leader] = {}
        self._shapes: dict[str, Shape] = {}
        self._planned: tuple[Any, Plan | None] = (None, None)
        """The last call :meth:`cached` planned and did not answer: :meth:`single` goes on
        from its plan (one event loop: nothing comes between the two)."""
        self.finality: dict[str, Finality] = {name: Finality() for name in self.groups}
        self._looked: dict[str, float] = {}
        self.translates = {n for n, g in self.groups.items() if g.spec.translate_to_appbase}
        self.active = bool(
            len(self.groups) > 1
            or rules
            or self.renamer
            or self.cache is not None
            or self.translates
        )
        """Whether requests go through here at all (else straight to the one router)."""

    def __repr__(self) -> str:
        return f"<Dispatcher {list(self.groups)} {len(self.routes)} routes {self.cache!r}>"

    def finality_of(self, group: Group) -> Finality:
        """What the group knows of its chain, brought up to date with its nodes' probes and
        answers at most twice a second."""
        finality = self.finality[group.name]
        now = self.clock()
        if now - self._looked.get(group.name, -1.0) >= 0.5:
            self._looked[group.name] = now
            for node in group.fleet.nodes:
                finality.saw(node.head(), node.irreversible)
        return finality

    # -- planning ------------------------------------------------------------------------

    def plan(self, member: dict[str, Any]) -> Plan:
        method = member["method"]
        params = member.get("params")
        if method == "call" or self.routes.by_params:  # the route depends on the params
            shape, params = self._shape(method, params)
        else:  # everything but the key depends on the method alone: worked out once
            known = self._shapes.get(method)
            if known is None:
                known = self._shape(method, None)[0]
                if len(self._shapes) >= 4096:  # clients choose methods: keep it bounded
                    self._shapes.clear()
                self._shapes[method] = known
            shape = known
            if shape.rewritten and params is None:
                params = []
        name = Name(shape.parts, shape.method, params)
        if shape.rewritten:
            original = member
            member = {"jsonrpc": "2.0", "method": shape.method, "params": params}
            if "id" in original:
                member["id"] = original["id"]
        key = f"{shape.group.name}\x1f{shape.dotted}\x1f{canonical(params)}"
        return Plan(name, shape.route, shape.group, shape.ttl, shape.broadcast, key, member,
                    shape.rewritten)  # fmt: skip

    def _shape(self, method: str, params: Any) -> tuple[Shape, Any]:
        """How a method is routed (and the params it is sent with)."""
        name = name_of(method, params, self.legacy)
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
        broadcast = self.chain.is_broadcast(sent) or self.chain.is_broadcast(name.dotted)
        ttl = route.ttl
        if ttl is None or broadcast:
            ttl = default_ttl(self.chain.name, name.parts, broadcast)
        shape = Shape(name.parts, name.dotted, sent, route, group, ttl, broadcast, rewritten)
        return shape, name.params

    # -- one call ------------------------------------------------------------------------

    def cached(self, call: RpcCall, no_cache: bool) -> Dispatched | None:
        """A single read answered from this process's cache at once, or None (then
        :meth:`single` takes the call on): the gateway asks this first, before it builds
        anything a forwarded call needs."""
        cache = self.cache
        if cache is None or no_cache or call.batch or not call.members:
            return None
        member = call.members[0]
        plan = self.plan(member)
        if plan.ttl != NO_CACHE:
            entry = cache.get(plan.key, self.finality_of(plan.group))
            if entry is not None:
                cache.count(self.stats.method_label(call), "hit")
                return self._hit(plan, entry, call.first_id)
        self._planned = (member, plan)
        return None

    def single(
        self,
        call: RpcCall,
        ident: Id,
        deadline: float | None,
        no_cache: bool,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
    ) -> Cancellable | None:
        """Answer one call through ``finish`` (see the module)."""
        member = call.members[0]
        planned, plan = self._planned
        self._planned = (None, None)
        if planned is not member or plan is None:
            plan = self.plan(member)
        label = self.stats.method_label(call)
        cache = self.cache
        state = ""
        if cache is not None and plan.ttl != NO_CACHE:
            state = "miss"
            if no_cache:
                cache.count(label, "bypass")
                state = "bypass"
            else:
                entry = cache.get(plan.key, self.finality_of(plan.group))
                if entry is not None:
                    cache.count(label, "hit")
                    finish(self._hit(plan, entry, ident))
                    return None
                if cache.shared is not None and cache.shared.usable(self.clock()):
                    return asyncio.get_running_loop().create_task(
                        self._shared_then_forward(
                            plan, ident, deadline, client_ip, headers, label, finish
                        )
                    )
        return self._join_or_forward(
            plan, ident, deadline, client_ip, headers, finish, state, label
        )

    async def _shared_then_forward(
        self,
        plan: Plan,
        ident: Id,
        deadline: float | None,
        client_ip: str,
        headers: dict[str, str],
        label: str,
        finish: Callable[[Dispatched], None],
    ) -> None:
        cache = self.cache
        assert cache is not None
        entry = await cache.get_shared(plan.key, self.finality_of(plan.group))
        if entry is not None:
            cache.count(label, "hit")
            finish(self._hit(plan, entry, ident))
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finished(result: Dispatched) -> None:
            finish(result)
            if not done.done():
                done.set_result(None)

        handle = self._join_or_forward(
            plan, ident, deadline, client_ip, headers, finished, "miss", label
        )
        try:
            await done
        except asyncio.CancelledError:
            if handle is not None:
                handle.cancel()
            raise

    def _hit(self, plan: Plan, entry: Entry, ident: Id) -> Dispatched:
        body = b'{"jsonrpc":"2.0","result":' + entry.result + b',"id":' + dumps(ident) + b"}"
        return Dispatched(body=body, groups=[plan.group.name], cache="hit", nodes=[entry.node])

    def _join_or_forward(
        self,
        plan: Plan,
        ident: Id,
        deadline: float | None,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
        state: str = "miss",
        label: str = "",
    ) -> Cancellable | None:
        """Follow an identical read in flight, or forward (``state``: the cache's verdict so
        far, counted here under ``label``: a read that follows is ``coalesced``)."""
        cache = self.cache
        if self.coalesce and not plan.broadcast:
            leader = self.inflight.get(plan.key)
            if leader is not None:
                if cache is not None and state == "miss":
                    cache.count(label, "coalesced")
                return leader.follow(plan, ident, deadline, client_ip, headers, finish)
        if cache is not None and state == "miss":
            cache.count(label, "miss")
        if self.coalesce and not plan.broadcast:
            leader = Leader(self, plan, state)
            self.inflight[plan.key] = leader
            leader.finish = finish
            leader.forwarding = self.forward(
                plan, deadline, client_ip, headers, leader.ended, body=_body(plan)
            )
            return leader

        def ended(outcome: Outcome) -> None:
            self.learn(plan, outcome)
            finish(Dispatched(outcome=outcome, groups=[plan.group.name], cache=state))

        return self.forward(plan, deadline, client_ip, headers, ended, body=_body(plan))

    def forward(
        self,
        plan: Plan,
        deadline: float | None,
        client_ip: str,
        headers: dict[str, str],
        done: Callable[[Outcome], None],
        *,
        body: bytes,
        broadcast: bool | None = None,
        avoid: tuple[Node, ...] = (),
        single: bool = True,
    ) -> Cancellable:
        route = plan.route
        retry_empty = single and self.chain.empty_is_unsure(
            plan.name.parts[-1], plan.name.params, plan.group.fleet.best_head
        )
        return plan.group.router.start(
            ProxyRequest(
                method="POST",
                path=None,
                headers=headers,
                body=body,
                idempotent=not (plan.broadcast if broadcast is None else broadcast),
                client_ip=client_ip,
                per_try=route.timeout,
                retries=route.retries,
                deadline=deadline,
                avoid=avoid,
                retry_empty=retry_empty,
            ),
            done,
        )

    def learn(self, plan: Plan, outcome: Outcome) -> None:
        """What an answer teaches: the chain's head and last irreversible block (from a
        dynamic global properties answer), and the answer itself for the cache."""
        resp, node = outcome.response, outcome.node
        if resp is None or node is None or resp.status >= 400:
            return
        body = resp.body
        finality = self.finality_of(plan.group)
        if b'"last_irreversible_block_num"' in body:
            match = _LIB.search(body)
            if match is not None:
                lib = int(match.group(1))
                node.observe_irreversible(lib)
                finality.saw(self.chain.head_in(body), lib)
        cache = self.cache
        if cache is None or plan.ttl == NO_CACHE:
            return
        now = self.clock()
        if plan.group.fleet.exclusion(node, now) is not None:
            return  # an excluded node served (failing open): never keep what it said
        result = result_of(body)
        if not has_result(result):
            return
        label = plan.name.method
        entry = cache.keep(
            plan.key,
            plan.name.parts,
            plan.name.params,
            plan.ttl,
            result,
            node.name,
            node.irreversible,
            finality,
        )
        if entry is None:
            cache.count(self.stats.label_of(label), "skipped")
            return
        cache.put(plan.key, entry)
        cache.count(self.stats.label_of(label), "stored")
        if cache.shared is not None:
            asyncio.get_running_loop().create_task(cache.put_shared(plan.key, entry))

    # -- batches -------------------------------------------------------------------------

    def batch(
        self,
        call: RpcCall,
        deadline: float | None,
        no_cache: bool,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
    ) -> Cancellable | None:
        """Answer a batch member by member (see the module)."""
        return Batch(self, call, deadline, no_cache, client_ip, headers, finish).start()


def _body(plan: Plan) -> bytes:
    return dumps(plan.member)


class Leader:
    """An upstream call that identical reads share: the first asked, the others follow."""

    __slots__ = ("dispatcher", "finish", "followers", "forwarding", "plan", "state")

    def __init__(self, dispatcher: Dispatcher, plan: Plan, state: str) -> None:
        self.dispatcher = dispatcher
        self.plan = plan
        self.state = state
        """The first client's ``X-Cache``: ``miss``, ``bypass``, or empty (not cacheable)."""
        self.finish: Callable[[Dispatched], None] | None = None
        self.forwarding: Cancellable | None = None
        self.followers: list[Follower] = []

    def follow(
        self,
        plan: Plan,
        ident: Id,
        deadline: float | None,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
    ) -> Follower:
        follower = Follower(self, plan, ident, deadline, client_ip, headers, finish)
        self.followers.append(follower)
        return follower

    def ended(self, outcome: Outcome) -> None:
        dispatcher = self.dispatcher
        if dispatcher.inflight.get(self.plan.key) is self:
            del dispatcher.inflight[self.plan.key]
        dispatcher.learn(self.plan, outcome)
        finish, self.finish = self.finish, None
        if finish is not None:
            finish(Dispatched(outcome=outcome, groups=[self.plan.group.name], cache=self.state))
        followers, self.followers = self.followers, []
        for follower in followers:
            follower.leader_ended(outcome)

    def cancel(self) -> None:
        """The first client went away: the call goes on for the others, if any."""
        self.finish = None
        if not self.followers and self.forwarding is not None:
            forwarding, self.forwarding = self.forwarding, None
            forwarding.cancel()
            if self.dispatcher.inflight.get(self.plan.key) is self:
                del self.dispatcher.inflight[self.plan.key]


class Follower:
    """A read waiting for an identical one in flight, within its own deadline."""

    __slots__ = (
        "client_ip",
        "deadline",
        "finish",
        "headers",
        "ident",
        "leader",
        "own",
        "plan",
        "timer",
    )

    def __init__(
        self,
        leader: Leader,
        plan: Plan,
        ident: Id,
        deadline: float | None,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
    ) -> None:
        self.leader = leader
        self.plan = plan
        self.ident = ident
        self.client_ip = client_ip
        self.headers = headers
        self.finish: Callable[[Dispatched], None] | None = finish
        self.own: Cancellable | None = None
        dispatcher = leader.dispatcher
        router = plan.group.router
        self.deadline = deadline or (dispatcher.clock() + router.total)
        loop = asyncio.get_running_loop()
        wait = max(0.0, self.deadline - dispatcher.clock())
        self.timer: asyncio.TimerHandle | None = loop.call_later(wait, self._expired)

    def leader_ended(self, outcome: Outcome) -> None:
        if self.finish is None:
            return
        resp = outcome.response
        if resp is None or resp.status >= 500:
            # The shared call failed: this read fails over on its own, within its deadline.
            self._stop_timer()
            dispatcher = self.leader.dispatcher
            plan = self.plan

            def ended(own: Outcome) -> None:
                self.own = None
                dispatcher.learn(plan, own)
                self._end(Dispatched(outcome=own, groups=[plan.group.name], cache="miss"))

            self.own = dispatcher.forward(
                plan,
                self.deadline,
                self.client_ip,
                self.headers,
                ended,
                body=_body(plan),
                avoid=tuple(outcome.tried),  # the nodes that failed the shared call
            )
            return
        body = _with_id(resp.body, self.ident)
        node = outcome.node
        self._end(
            Dispatched(
                body=body,
                status=resp.status,
                groups=[self.plan.group.name],
                cache="coalesced",
                nodes=[node.name] if node is not None else [],
            )
        )

    def _expired(self) -> None:
        self.timer = None
        if self.finish is None or self.own is not None:
            return
        with_tries = Outcome(
            error=UpstreamTimeout("balancer", "the deadline passed while an identical read ran")
        )
        self._end(Dispatched(outcome=with_tries, groups=[self.plan.group.name]))

    def _end(self, result: Dispatched) -> None:
        finish, self.finish = self.finish, None
        self._stop_timer()
        if finish is not None:
            finish(result)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel(self) -> None:
        self.finish = None
        self._stop_timer()
        if self.own is not None:
            own, self.own = self.own, None
            own.cancel()
        followers = self.leader.followers
        if self in followers:
            followers.remove(self)


def _with_id(body: bytes, ident: Id) -> bytes:
    """A single answer with another id (a follower's, a batch member's own)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        import json

        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return body
    if not isinstance(doc, dict):
        return body
    doc["id"] = ident
    return dumps(doc)


class Batch:
    """One batch through the dispatcher: hits answered here, the rest per group in parallel,
    the answers put back in order."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        call: RpcCall,
        deadline: float | None,
        no_cache: bool,
        client_ip: str,
        headers: dict[str, str],
        finish: Callable[[Dispatched], None],
    ) -> None:
        self.dispatcher = dispatcher
        self.call = call
        self.deadline = deadline
        self.no_cache = no_cache
        self.client_ip = client_ip
        self.headers = headers
        self.finish: Callable[[Dispatched], None] | None = finish
        self.answers: list[Any] = [None] * len(call.members)
        """Each member's answer object (None: a notification, or not yet)."""
        self.pending = 0
        self.forwardings: list[Cancellable] = []
        self.outcomes: list[Outcome] = []
        self.groups: list[str] = []
        self.nodes: list[str] = []
        self.hits = 0

    def start(self) -> Cancellable | None:
        dispatcher = self.dispatcher
        cache = dispatcher.cache
        label_of = dispatcher.stats.label_of
        by_group: dict[str, list[tuple[int, Plan]]] = {}
        for index, member in enumerate(self.call.members):
            plan = dispatcher.plan(member)
            if cache is not None and plan.ttl != NO_CACHE:
                label = label_of(plan.name.method)
                if self.no_cache:
                    cache.count(label, "bypass")
                else:
                    entry = cache.get(plan.key, dispatcher.finality_of(plan.group))
                    if entry is not None and "id" in member:
                        cache.count(label, "hit")
                        self.answers[index] = (
                            b'{"jsonrpc":"2.0","result":'
                            + entry.result
                            + b',"id":'
                            + dumps(member["id"])
                            + b"}"
                        )
                        self.hits += 1
                        self.nodes.append(entry.node)
                        continue
                    cache.count(label, "miss")
            by_group.setdefault(plan.group.name, []).append((index, plan))
        for group, plans in by_group.items():
            self.groups.append(group)
            self.pending += 1
            self._send(group, plans)
        if self.pending == 0:
            self._done()
            return None
        return self

    def _send(self, group: str, plans: list[tuple[int, Plan]]) -> None:
        dispatcher = self.dispatcher
        members = []
        back: dict[int, int] = {}
        for internal, (index, plan) in enumerate(plans):
            member = dict(plan.member)
            if "id" in self.call.members[index]:
                member["id"] = internal  # answers map back whatever order they come in
                back[internal] = index
            else:
                member.pop("id", None)
            members.append(member)
        broadcast = any(plan.broadcast for _, plan in plans)
        first = plans[0][1]

        def ended(outcome: Outcome) -> None:
            self.outcomes.append(outcome)
            resp, node = outcome.response, outcome.node
            answers = _answers_of(resp.body) if resp is not None and resp.status < 400 else None
            if node is not None:
                self.nodes.append(node.name)
            if answers is None:
                kind = failure_of(outcome.error) if resp is None else "upstream"
                failure = FAILURES[kind]
                text = str(outcome.error or f"answered HTTP {resp.status if resp else '?'}")
                for index in back.values():
                    self.answers[index] = {
                        "jsonrpc": "2.0",
                        "error": error_object(failure.code, text),
                        "id": self.call.members[index]["id"],
                    }
            else:
                for answer in answers:
                    internal = answer.get("id") if isinstance(answer, dict) else None
                    found = back.get(internal) if isinstance(internal, int) else None
                    if found is None:
                        continue
                    index = found
                    answer["id"] = self.call.members[index]["id"]
                    self.answers[index] = answer
                    self._learn(plans, index, answer, outcome)
                for index in back.values():
                    if self.answers[index] is None:
                        self.answers[index] = {
                            "jsonrpc": "2.0",
                            "error": error_object(
                                FAILURES["upstream"].code, "the node gave this member no answer"
                            ),
                            "id": self.call.members[index]["id"],
                        }
            self.pending -= 1
            if self.pending == 0:
                self._done()

        self.forwardings.append(
            dispatcher.forward(
                first,
                self.deadline,
                self.client_ip,
                self.headers,
                ended,
                body=dumps(members),
                broadcast=broadcast,
                single=False,
            )
        )

    def _learn(
        self, plans: list[tuple[int, Plan]], index: int, answer: dict[str, Any], outcome: Outcome
    ) -> None:
        dispatcher = self.dispatcher
        cache = dispatcher.cache
        node = outcome.node
        if cache is None or node is None or "result" not in answer:
            return
        plan = next(p for i, p in plans if i == index)
        if plan.ttl == NO_CACHE:
            return
        if plan.group.fleet.exclusion(node, dispatcher.clock()) is not None:
            return
        finality = dispatcher.finality_of(plan.group)
        entry = cache.keep(
            plan.key,
            plan.name.parts,
            plan.name.params,
            plan.ttl,
            answer["result"],
            node.name,
            node.irreversible,
            finality,
        )
        if entry is not None:
            cache.put(plan.key, entry)
            if cache.shared is not None:
                asyncio.get_running_loop().create_task(cache.put_shared(plan.key, entry))

    def _done(self) -> None:
        finish, self.finish = self.finish, None
        if finish is None:
            return
        parts = [a if isinstance(a, bytes) else dumps(a) for a in self.answers if a is not None]
        outcome = _merged(self.outcomes)
        if self.hits == len(self.call.members) and self.dispatcher.cache is not None:
            state = "hit"
        elif self.dispatcher.cache is not None:
            state = "miss"
        else:
            state = ""
        finish(
            Dispatched(
                outcome=outcome,
                body=b"[" + b",".join(parts) + b"]",
                groups=self.groups,
                cache=state,
                nodes=self.nodes,
            )
        )

    def cancel(self) -> None:
        self.finish = None
        forwardings, self.forwardings = self.forwardings, []
        for forwarding in forwardings:
            forwarding.cancel()


def _answers_of(body: bytes) -> list[Any] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        import json

        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if isinstance(doc, dict):
        doc = [doc]
    return doc if isinstance(doc, list) else None


def _merged(outcomes: list[Outcome]) -> Outcome | None:
    """One outcome for the accounting of a batch sent as several."""
    if not outcomes:
        return None
    if len(outcomes) == 1:
        return outcomes[0]
    tried: list[Node] = [n for o in outcomes for n in o.tried]
    answered = [o for o in outcomes if o.response is not None]
    first = answered[0] if answered else outcomes[0]
    return Outcome(
        response=first.response,
        error=None if answered else (first.error or NoHealthyNode("no node answered")),
        node=first.node,
        tried=tried,
        hedged=any(o.hedged for o in outcomes),
    )
