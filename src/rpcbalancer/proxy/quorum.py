"""Quorum reads: for the calls where a wrong answer is worse than a slow one.

A route with ``quorum: {ask: 3, agree: 2}`` sends each read it serves to ``ask`` different
nodes at once (each through the router, with its retries and deadline) and answers as soon
as ``agree`` of them gave the same answer (the JSON-RPC answer less its ``id``, compared
with its keys sorted); the tries still out are cancelled, and their nodes not blamed. A node
whose answer differs from the one agreed on is counted, logged and taken out of rotation (as
an outlier is, cause ``quorum``): a forked or corrupted node is excluded like a lagging one.
When every node has answered and no answer has ``agree`` votes, the client gets a 502 that
says the nodes disagree. The extra requests are the price: they count in the upstream
requests, as every try does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import orjson

from ..callbacks import Cancellable
from ..fleet.nodes import Node
from ..messages import error_response
from .context import RequestContext
from .forward import Forward
from .forwarding import Forwarding, Outcome
from .plan import Plan

log = logging.getLogger(__name__)


class QuorumWay(Protocol):
    """What a quorum read needs of the gateway."""

    forward: Forward

    def learned(self, ctx: RequestContext, outcome: Outcome) -> None: ...

    def answer(self, ctx: RequestContext) -> None: ...


class Quorum:
    """One read asked of several nodes, answered when enough agree."""

    __slots__ = (
        "agree",
        "ctx",
        "mark",
        "over",
        "pending",
        "plan",
        "stages",
        "votes",
        "way",
    )

    def __init__(
        self,
        way: QuorumWay,
        ctx: RequestContext,
        plan: Plan,
        agree: int,
        mark: Callable[[str, str, str], None],
    ) -> None:
        self.way = way
        self.ctx = ctx
        self.plan = plan
        self.agree = agree
        self.mark = mark
        """Told of a node whose answer differed (its name, the cause, why)."""
        self.votes: dict[bytes, list[Outcome]] = {}
        self.stages: list[Cancellable] = []
        self.pending = 0
        self.over = False

    def __repr__(self) -> str:
        counts = sorted((len(v) for v in self.votes.values()), reverse=True)
        return f"<Quorum {self.agree} of {len(self.stages)} votes={counts} over={self.over}>"

    def start(self, ask: int) -> Cancellable:
        """Ask ``ask`` nodes, each a different one while there are enough."""
        chosen: list[Node] = []
        for _ in range(ask):
            if self.over:
                break
            self.pending += 1
            stage = self.way.forward.call(self.ctx, self.plan, self._ended, tuple(chosen))
            self.stages.append(stage)
            if isinstance(stage, Forwarding):
                chosen += stage.outcome.tried
        return self

    def _ended(self, outcome: Outcome) -> None:
        if self.over:
            return
        self.pending -= 1
        resp = outcome.response
        if resp is not None and outcome.node is not None and resp.status == 200:
            vote = _vote(resp.body)
            if vote is not None:
                same = self.votes.setdefault(vote, [])
                if all(o.node is not outcome.node for o in same):  # one vote a node
                    same.append(outcome)
                if len(same) >= self.agree:
                    self._decided(vote)
                    return
        if self.pending == 0:
            self._decided(None)

    def _decided(self, vote: bytes | None) -> None:
        self.over = True
        for stage in self.stages:
            stage.cancel()  # (a stage that ended ignores it; a try still out is not blamed)
        ctx, plan = self.ctx, self.plan
        if vote is None:
            heard = [o.node.name for v in self.votes.values() for o in v if o.node]
            message = (
                f"Upstream nodes disagree: no answer was given by {self.agree} nodes "
                f"({len(heard)} answered, in {len(self.votes)} different ways)"
            )
            for name in heard:
                self.mark(name, "quorum", "no quorum: " + message)
            ctx.answer = error_response("upstream", message, ctx.call)
            self.way.answer(ctx)
            return
        winners = self.votes[vote]
        for other, outcomes in self.votes.items():
            if other == vote:
                continue
            for outcome in outcomes:
                if outcome.node is not None:
                    why = f"its answer to {plan.shape.label} differed from {self.agree} others"
                    self.mark(outcome.node.name, "quorum", why)
        self.way.learned(ctx, winners[0])

    def cancel(self) -> None:
        """The client went away: every try still out is stopped."""
        self.over = True
        for stage in self.stages:
            stage.cancel()


def _vote(body: bytes) -> bytes | None:
    """An answer as compared: without its id, its keys sorted (None: not JSON-RPC)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    doc.pop("id", None)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
