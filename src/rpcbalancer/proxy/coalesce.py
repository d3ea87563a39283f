"""The coalesce step: identical reads in flight share one upstream call.

The first read of a key (:attr:`.plan.Plan.key`: group, method, parameters) to miss the cache
leads: it is forwarded as any call. An identical read that arrives while it is out follows
it: it sends nothing, and gets the leader's answer with its own id (``X-Cache: coalesced``).
Each follower keeps its own deadline (it fails with a timeout when that comes first), and when
the shared call fails it fails over on its own, to the nodes the shared call did not try.
A leader whose client goes away goes on for its followers. Broadcasts never coalesce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ..callbacks import Cancellable
from ..errors import UpstreamTimeout
from ..jsonrpc import Id, dumps, loads
from .context import RequestContext
from .forward import Forward
from .forwarding import Outcome
from .plan import Plan


class Way(Protocol):
    """What coalescing asks of the gateway: the steps of the way back."""

    def learned(self, ctx: RequestContext, outcome: Outcome) -> None:
        """The learn step for ``ctx``'s call, then its answer (unless it went away)."""
        ...

    def answer(self, ctx: RequestContext) -> None:
        """Answer ``ctx`` (the answer step and the accounting), unless it went away."""
        ...

    def not_there_yet(self, ctx: RequestContext, plan: Plan, outcome: Outcome) -> bool:
        """Whether a ``null`` in ``outcome`` denies a block clients were told exists."""
        ...


class Coalescer:
    def __init__(
        self, way: Way, forward: Forward, clock: Callable[[], float], total: float
    ) -> None:
        self.way = way
        self.forward = forward
        """The route step (the leader's call, a follower's own when the shared one failed)."""
        self.clock = clock
        self.total = total
        """The router's deadline: a follower's own when its client gave none."""
        self.inflight: dict[str, Leader] = {}

    def __repr__(self) -> str:
        return f"<Coalescer {len(self.inflight)} in flight>"

    def join(self, ctx: RequestContext, plan: Plan) -> Cancellable:
        """Follow an identical read in flight (``X-Cache: coalesced``), or lead one."""
        key = plan.key
        leader = self.inflight.get(key)
        if leader is not None:
            return leader.follow(ctx, plan)
        leader = Leader(self, ctx, key)
        self.inflight[key] = leader
        leader.forwarding = self.forward.call(ctx, plan, leader.ended)
        return leader


class Leader:
    """An upstream call that identical reads share: the first asked, the others follow."""

    __slots__ = ("coalescer", "ctx", "followers", "forwarding", "key", "waiting")

    def __init__(self, coalescer: Coalescer, ctx: RequestContext, key: str) -> None:
        self.coalescer = coalescer
        self.ctx = ctx
        self.key = key
        self.waiting = True
        """Whether the first client still waits for the answer."""
        self.forwarding: Cancellable | None = None
        self.followers: list[Follower] = []

    def __repr__(self) -> str:
        return f"<Leader {self.key[:60]!r} {len(self.followers)} followers>"

    def follow(self, ctx: RequestContext, plan: Plan) -> Follower:
        follower = Follower(self, ctx, plan)
        self.followers.append(follower)
        return follower

    def ended(self, outcome: Outcome) -> None:
        coalescer = self.coalescer
        if coalescer.inflight.get(self.key) is self:
            del coalescer.inflight[self.key]
        coalescer.way.learned(self.ctx, outcome)  # learns even when its client went away
        followers, self.followers = self.followers, []
        for follower in followers:
            follower.leader_ended(outcome)

    def cancel(self) -> None:
        """The first client went away: the call goes on for the others, if any."""
        self.waiting = False
        if not self.followers and self.forwarding is not None:
            forwarding, self.forwarding = self.forwarding, None
            forwarding.cancel()
            coalescer = self.coalescer
            if coalescer.inflight.get(self.key) is self:
                del coalescer.inflight[self.key]


class Follower:
    """A read waiting for an identical one in flight, within its own deadline."""

    __slots__ = ("ctx", "deadline", "leader", "own", "plan", "timer", "verdict")

    def __init__(self, leader: Leader, ctx: RequestContext, plan: Plan) -> None:
        self.leader = leader
        self.ctx = ctx
        self.plan = plan
        self.verdict = ctx.verdict
        """The cache's verdict before it followed (again its own if it fails over)."""
        ctx.verdict = "coalesced"
        self.own: Cancellable | None = None
        """Its own forwarding, when the shared call failed."""
        coalescer = leader.coalescer
        now = coalescer.clock()
        self.deadline = ctx.deadline or (now + coalescer.total)
        loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = loop.call_later(
            max(0.0, self.deadline - now), self._expired
        )

    def leader_ended(self, outcome: Outcome) -> None:
        ctx = self.ctx
        if ctx.reply is None:
            return  # its client went away
        self._stop_timer()
        way = self.leader.coalescer.way
        resp = outcome.response
        if resp is None or resp.status >= 500 or way.not_there_yet(ctx, self.plan, outcome):
            # The shared call failed: this read fails over on its own, within its deadline,
            # to the nodes the shared call did not try.
            if ctx.deadline is None:
                ctx.deadline = self.deadline
            ctx.verdict = self.verdict
            forward = self.leader.coalescer.forward
            self.own = forward.call(ctx, self.plan, self._own_ended, tuple(outcome.tried))
            return
        ctx.body = with_id(resp.body, ctx.call.first_id if ctx.call is not None else None)
        ctx.status = resp.status
        node = outcome.node
        ctx.nodes = (node.name,) if node is not None else ()
        way.answer(ctx)

    def _own_ended(self, outcome: Outcome) -> None:
        self.own = None
        self.ctx.forwarded(outcome)

    def _expired(self) -> None:
        self.timer = None
        ctx = self.ctx
        if ctx.reply is None or self.own is not None:
            return
        followers = self.leader.followers
        if self in followers:
            followers.remove(self)
        ctx.outcome = Outcome(
            error=UpstreamTimeout("balancer", "the deadline passed while an identical read ran")
        )
        self.leader.coalescer.way.answer(ctx)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel(self) -> None:
        self._stop_timer()
        if self.own is not None:
            own, self.own = self.own, None
            own.cancel()
        followers = self.leader.followers
        if self in followers:
            followers.remove(self)


def with_id(body: bytes, ident: Id) -> bytes:
    """A single answer with another id (a follower's, a batch member's own)."""
    try:
        doc = loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(doc, dict):
        return body
    doc["id"] = ident
    return dumps(doc)
