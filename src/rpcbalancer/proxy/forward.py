"""The route step: a call's request for its group's router, and the router started.

What a node is sent is the client's call as it came (its bytes, unless the method was renamed
or translated), with the headers every node sees for this request (made once per request,
when the first node is asked: JSON, our user agent, ``X-Forwarded-For`` with the client's
address, ``X-Request-Id``), the route's per-try timeout and retries, and the client's own
deadline. A single call carries its method and params, so that the router can ask the chain
preset, when a node answers ``null``, whether that may only mean "not here yet" (a block the
chain has reached, a transaction, a receipt) and ask another node first; a batch never does.
"""

from __future__ import annotations

from collections.abc import Callable

from ..callbacks import Cancellable
from ..fleet.nodes import Node
from ..jsonrpc import dumps
from .context import RequestContext
from .forwarding import Outcome
from .plan import Plan
from .request import ProxyRequest


class Forward:
    def __init__(self, user_agent: str, fanout: int = 1) -> None:
        self.user_agent = user_agent
        self.fanout = fanout
        """Nodes a broadcast that may be sent twice goes to at once (``broadcast.fanout``)."""

    def __repr__(self) -> str:
        return f"<Forward {self.user_agent!r}>"

    def call(
        self,
        ctx: RequestContext,
        plan: Plan,
        done: Callable[[Outcome], None],
        avoid: tuple[Node, ...] = (),
        body: bytes | None = None,
    ) -> Cancellable:
        """Forward ``ctx``'s call (or its ``GET``) to ``plan``'s group; ``avoid``: nodes to
        try last (they failed the same read for another request); ``body``: a call of ours
        on the client's behalf (``plan``'s), in place of the client's."""
        call = ctx.call
        shape = plan.shape
        route = shape.route
        min_head = 0
        if call is None:
            method, unsure_of = "GET", None
        else:
            method = "POST"
            if body is None:
                body = plan.body() if shape.rewritten else (call.body or ctx.req.body)
            unsure_of = (plan.parts[-1], plan.params)
            if shape.pins:  # a read at a block tag: at a number the node has (:mod:`.heads`)
                nodes, failopen = plan.group.fleet.candidates(ctx.start)
                wrote = ctx.wrote
                if wrote is not None and wrote.only and wrote.node in nodes:
                    nodes = [wrote.node]  # (read-your-writes sends it there)
                pinned = None if failopen else plan.pinned(nodes)
                if pinned is not None:
                    body = dumps(pinned[0])
                    min_head = pinned[1]
        request = ProxyRequest(
            method,
            ctx.path,
            self.headers(ctx),
            body,
            not plan.broadcast,
            ctx.ip,
            route.timeout,
            route.retries,
            ctx.deadline,
            avoid,
            unsure_of,
            shape.resend,
            self.fanout if shape.resend else 1,
        )
        wrote = ctx.wrote
        if wrote is not None:  # read-your-writes: where the client's broadcasts are known
            if wrote.only or plan.broadcast:  # (its broadcasts stay on one node)
                request.prefer = wrote.node
            min_head = max(min_head, wrote.block or 0)
        request.min_head = min_head
        return plan.group.router.start(request, done)

    def batch(
        self,
        ctx: RequestContext,
        plan: Plan,
        body: bytes,
        broadcast: bool,
        done: Callable[[Outcome], None],
        min_head: int = 0,
    ) -> Cancellable:
        """Forward a batch body to the group of ``plan`` (its first member's), with that
        member's route: a ``null`` answer is never asked again of another node. ``min_head``:
        the highest block its members' tags were resolved to (a node that has it serves)."""
        route = plan.shape.route
        request = ProxyRequest(
            "POST",
            ctx.path,
            self.headers(ctx),
            body,
            not broadcast,
            ctx.ip,
            route.timeout,
            route.retries,
            ctx.deadline,
        )
        wrote = ctx.wrote
        if wrote is not None:  # read-your-writes, as for a single call
            if wrote.only or broadcast:
                request.prefer = wrote.node
            min_head = max(min_head, wrote.block or 0)
        request.min_head = min_head
        return plan.group.router.start(request, done)

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        """The headers every node asked for ``ctx`` is sent (made once, when first asked)."""
        headers = ctx.upstream_headers
        if headers is None:
            forwarded, peer = ctx.forwarded_for, ctx.req.peer
            headers = ctx.upstream_headers = {
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": self.user_agent,
                "x-forwarded-for": f"{forwarded}, {peer}" if forwarded else peer,
                "x-request-id": ctx.rid,
            }
        return headers
