"""A batch on the way: each member planned and looked up on its own, the rest forwarded per
group, the answers put back together.

Members answered from the cache stay here. When every other member goes to one group as it
came (nothing answered here, nothing renamed), the client's batch is forwarded whole and the
node's answer passed on as it is (the usual case). Otherwise each group gets a smaller batch
(ids rewritten to their positions, so that answers map back whatever order they come in; a
broadcast member makes its batch a broadcast: never sent twice), all in parallel, and the
answers are put back in the order of the request with the clients' own ids. Either way each
answer is learned from (:mod:`.learn`) as a single call's would be.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Protocol

from ..callbacks import Cancellable
from ..config.ttl import NO_CACHE
from ..errors import NoHealthyNode
from ..fleet.nodes import Node
from ..jsonrpc import INVALID_PARAMS, dumps, error_object, loads, result_answer
from ..messages import FAILURES, failure_of
from ..observe.counters import Stats
from .admission import Admission
from .context import RequestContext
from .forward import Forward
from .forwarding import Outcome
from .heads import WAITS
from .learn import Learner
from .lookup import Lookup, answer_of
from .plan import Plan, Planner
from .writes import RecentWrites


class BatchWay(Protocol):
    """What a batch asks of the gateway: its steps, and the answer at the end."""

    planner: Planner
    lookup: Lookup
    learner: Learner
    forward: Forward
    stats: Stats
    pause: float
    total: float
    writes: RecentWrites | None

    def answer(self, ctx: RequestContext) -> None: ...


class Batch:
    """One batch through the way: hits answered here, the rest per group in parallel."""

    __slots__ = (
        "answers",
        "ctx",
        "forwardings",
        "groups",
        "hits",
        "nodes",
        "outcomes",
        "pending",
        "pins",
        "way",
    )

    def __init__(self, way: BatchWay, ctx: RequestContext) -> None:
        self.way = way
        self.ctx = ctx
        assert ctx.call is not None
        self.answers: list[Any] = [None] * len(ctx.call.members)
        """Each member's answer: its bytes (a hit), its object, or None (a notification,
        or not yet)."""
        self.pending = 0
        self.forwardings: list[Cancellable] = []
        self.outcomes: list[Outcome] = []
        self.groups: list[str] = []
        self.nodes: list[str] = []
        self.hits = 0
        self.pins: dict[str, int] = {}
        """Per group, the highest block its members' tags were resolved to (:mod:`.heads`)."""

    def __repr__(self) -> str:
        return f"<Batch {len(self.answers)} members, {self.hits} hits, {self.pending} pending>"

    def start(self) -> Cancellable | None:
        way, ctx = self.way, self.ctx
        call = ctx.call
        assert call is not None
        lookup = way.lookup
        caching = lookup.cache is not None
        by_group: dict[str, list[tuple[int, Plan]]] = {}
        rewritten = False
        follows = False
        for index, member in enumerate(call.members):
            plan = way.planner.plan(member)
            follows = follows or plan.shape.follows_writes
            if plan.shape.limit:
                refused = way.planner.refusal(plan)
                if refused is not None:  # this member only: the others go on without it
                    way.stats.heavy_refused += 1
                    self.answers[index] = _error(INVALID_PARAMS, refused, member.get("id"))
                    rewritten = True
                    continue
            if caching and plan.ttl != NO_CACHE:
                label = plan.shape.label
                if ctx.no_cache:
                    lookup.count(label, "bypass")
                else:
                    entry = lookup.here(plan)
                    if (
                        entry is not None
                        and ctx.wrote is not None
                        and plan.shape.follows_writes
                        and entry.expires != math.inf
                    ):
                        entry = None  # it may be older than the client's own broadcast
                    if entry is not None and "id" in member:
                        lookup.count(label, "hit")
                        self.answers[index] = answer_of(entry, member["id"])
                        if plan.shape.reports_head:
                            self._hold(index, plan, entry.node)
                        self.hits += 1
                        self.nodes.append(entry.node)
                        continue
                    lookup.count(label, "miss")
            if plan.shape.pins and self._pin(plan):
                rewritten = True  # (sent with its tag resolved)
            elif _asks_block(plan) or (plan.broadcast and way.writes is not None):
                rewritten = True  # (its answer is looked at: a block told to exist, never
                # null; a broadcast accepted, the client's reads follow it)
            # (A member that reports the head is answered member by member: it may be held.)
            rewritten = rewritten or plan.shape.rewritten or plan.shape.reports_head
            by_group.setdefault(plan.shape.group.name, []).append((index, plan))
        if not follows:
            ctx.wrote = None  # no member can see the client's broadcast: routed as anyone's
        if len(by_group) == 1 and not self.hits and not rewritten:
            plans = next(iter(by_group.values()))
            self._whole(plans)
            return self
        for plans in by_group.values():
            self._send(plans)
        if self.pending == 0:
            self._done()
            return None
        return self

    def _pin(self, plan: Plan) -> bool:
        """Resolve a member's block tags (:meth:`.Plan.pinned`); True when it was."""
        group = plan.group
        nodes, failopen = group.fleet.candidates(self.ctx.start)
        pinned = None if failopen else plan.pinned(nodes)
        if pinned is None:
            return False
        plan.member = pinned[0]
        self.pins[group.name] = max(self.pins.get(group.name, 0), pinned[1])
        return True

    def _whole(self, plans: list[tuple[int, Plan]]) -> None:
        """Every member to one group, as the client sent them: the batch goes whole and the
        node's answer is passed on."""
        ctx = self.ctx
        call = ctx.call
        assert call is not None
        first = plans[0][1]
        group = first.shape.group
        self.groups.append(group.name)
        ctx.groups = (group.name,)
        broadcast = any(plan.shape.broadcast for _, plan in plans)
        body = call.body or ctx.req.body
        if self.way.lookup.cache is not None:
            ctx.verdict = "miss"

        def ended(outcome: Outcome) -> None:
            resp = outcome.response
            ctx.outcome = outcome
            if resp is not None and resp.status < 400 and self.way.lookup.cache is not None:
                self._learn_by_id(plans, resp.body, outcome.node)
            self.way.answer(ctx)

        self.pending = 1
        self.forwardings.append(self.way.forward.batch(ctx, first, body, broadcast, ended))

    def _learn_by_id(self, plans: list[tuple[int, Plan]], body: bytes, node: Node | None) -> None:
        """Learn from a whole batch's answers, matched to the members by the clients' ids
        (members whose id is missing or shared with another are not learned from)."""
        call = self.ctx.call
        assert call is not None
        if node is None:
            return
        by_id: dict[Any, int] = {}
        shared: set[Any] = set()
        for index, _ in plans:
            ident = call.members[index].get("id")
            if ident is None or isinstance(ident, float):
                continue
            if ident in by_id:
                shared.add(ident)
            by_id[ident] = index
        answers = _answers_of(body)
        if answers is None:
            return
        positions = dict(plans)
        learner = self.way.learner
        for answer in answers:
            if not isinstance(answer, dict) or "result" not in answer:
                continue
            ident = answer.get("id")
            if isinstance(ident, dict | list) or ident in shared:
                continue
            found = by_id.get(ident)
            if found is not None:
                learner.keep(positions[found], answer["result"], node)

    def _send(self, plans: list[tuple[int, Plan]]) -> None:
        """A smaller batch to one group, ids rewritten to positions."""
        ctx = self.ctx
        call = ctx.call
        assert call is not None
        members = []
        back: dict[int, int] = {}
        for internal, (index, plan) in enumerate(plans):
            member = dict(plan.member)
            if "id" in call.members[index]:
                member["id"] = internal  # answers map back whatever order they come in
                back[internal] = index
            else:
                member.pop("id", None)
            members.append(member)
        first = plans[0][1]
        self.groups.append(first.shape.group.name)
        broadcast = any(plan.shape.broadcast for _, plan in plans)

        def ended(outcome: Outcome) -> None:
            self._ended(plans, back, outcome)

        self.pending += 1
        pin = self.pins.get(first.shape.group.name, 0)
        self.forwardings.append(
            self.way.forward.batch(ctx, first, dumps(members), broadcast, ended, pin)
        )

    def _ended(self, plans: list[tuple[int, Plan]], back: dict[int, int], outcome: Outcome) -> None:
        call = self.ctx.call
        assert call is not None
        self.outcomes.append(outcome)
        resp, node = outcome.response, outcome.node
        answers = _answers_of(resp.body) if resp is not None and resp.status < 400 else None
        if node is not None:
            self.nodes.append(node.name)
        if answers is None:
            kind = failure_of(outcome.error) if resp is None else "upstream"
            text = str(outcome.error or f"answered HTTP {resp.status if resp else '?'}")
            for index in back.values():
                self.answers[index] = _error(FAILURES[kind].code, text, call.members[index]["id"])
        else:
            positions = dict(plans)
            learner = self.way.learner
            writes = self.way.writes
            for answer in answers:
                internal = answer.get("id") if isinstance(answer, dict) else None
                found = back.get(internal) if isinstance(internal, int) else None
                if found is None:
                    continue
                answer["id"] = call.members[found]["id"]
                self.answers[found] = answer
                plan = positions[found]
                if plan.shape.reports_head and node is not None:
                    self._hold(found, plan, node.name, node)
                if node is not None and "result" in answer:
                    learner.keep(positions[found], answer["result"], node)
                    if plan.broadcast and writes is not None:  # read-your-writes
                        writes.wrote(Admission.client_of(self.ctx), node, dumps(answer))
            for index in back.values():
                if self.answers[index] is None:
                    why = "the node gave this member no answer"
                    self.answers[index] = _error(
                        FAILURES["upstream"].code, why, call.members[index]["id"]
                    )
            again = [(i, plan) for i, plan in plans if self._not_there_yet(i, plan)]
            if again and self._may_wait():
                self._ask_again(again)
                return
        self.pending -= 1
        if self.pending == 0:
            self._done()

    def _not_there_yet(self, index: int, plan: Plan) -> bool:
        """Whether a member's answer is ``null`` for a block its group told clients exists."""
        heads = plan.group.heads
        answer = self.answers[index]
        return (
            heads is not None
            and isinstance(answer, dict)
            and "result" in answer
            and answer["result"] is None
            and heads.told(plan.parts[-1], plan.params)
        )

    def _may_wait(self) -> bool:
        """Whether the batch may wait a fraction of a block and ask again (its deadline and
        :data:`.heads.WAITS` allowing)."""
        ctx, way = self.ctx, self.way
        if ctx.waited >= WAITS:
            return False
        deadline = ctx.deadline or ctx.start + way.total
        return way.lookup.clock() + way.pause < deadline

    def _ask_again(self, plans: list[tuple[int, Plan]]) -> None:
        """Ask these members again, alone, after a fraction of a block (this part of the
        batch stays pending meanwhile)."""
        self.ctx.waited += 1

        def again() -> None:
            self.pending -= 1
            self._send(plans)

        timer = asyncio.get_running_loop().call_later(self.way.pause, again)
        self.forwardings.append(timer)

    def _hold(self, index: int, plan: Plan, name: str, node: Node | None = None) -> None:
        """A member that reports the head: behind the head its group holds, it gets the
        answer that reported that one (:mod:`.heads`), with its own id. The head a node
        reported (``node``: not a cache hit's) is its latest word, as a single call's is."""
        heads = plan.group.heads
        answer = self.answers[index]
        if heads is None or answer is None:
            return
        body = answer if isinstance(answer, bytes) else dumps(answer)
        if node is not None:
            head = heads.chain.reported_head(body)
            if head is not None:
                node.observe_head(self.way.lookup.clock(), head)
        kept = heads.behind(plan.key, body, name)
        if kept is not None:
            ident = self.ctx.call.members[index].get("id") if self.ctx.call is not None else None
            self.answers[index] = result_answer(kept.result, ident)

    def _done(self) -> None:
        ctx = self.ctx
        call = ctx.call
        assert call is not None
        outcome = ctx.outcome = _merged(self.outcomes)
        ctx.groups = tuple(self.groups)
        ctx.nodes = tuple(self.nodes)
        if self.way.lookup.cache is not None:
            ctx.verdict = "hit" if self.hits == len(call.members) else "miss"
        if self.hits or outcome is None or outcome.response is not None:
            parts = [a if isinstance(a, bytes) else dumps(a) for a in self.answers if a is not None]
            ctx.body = b"[" + b",".join(parts) + b"]"
        # else no member was answered: the failure is the batch's, as when it went whole
        self.way.answer(ctx)

    def cancel(self) -> None:
        forwardings, self.forwardings = self.forwardings, []
        for forwarding in forwardings:
            forwarding.cancel()


def _asks_block(plan: Plan) -> bool:
    """Whether a member asks for a block by number, and its group holds the head."""
    heads = plan.group.heads
    return heads is not None and heads.chain.block_asked(plan.parts[-1], plan.params) is not None


def _error(code: int, message: str, ident: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error_object(code, message), "id": ident}


def _answers_of(body: bytes) -> list[Any] | None:
    try:
        doc = loads(body)
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
