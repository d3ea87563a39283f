"""One request on its way through the gateway: what each step needs of the earlier ones, and
what the answer and the access log read (the verdict of the cache, the groups, the nodes, the
outcome) without looking back at any header.

A :class:`RequestContext` is made by admission and carried down the way (plan, cache,
coalesce, route) and back (learn, answer, account). It is also the request's handle: the
server keeps it while the answer is not written, and cancelling it stops whatever stage is
under way (a forwarding, a wait for an identical read, a batch, a look-up in Redis).
"""

from __future__ import annotations

from typing import Protocol

from ..callbacks import Cancellable
from ..config import ApiKey
from ..jsonrpc import RpcCall
from ..messages import HttpRequest, HttpResponse, Reply
from .forwarding import Outcome
from .plan import Plan
from .writes import Write


class Way(Protocol):
    """Where a forwarding's end takes a request: the steps after the node (the gateway)."""

    def learned(self, ctx: RequestContext, outcome: Outcome) -> None: ...


class RequestContext:
    __slots__ = (
        "answer",
        "body",
        "call",
        "deadline",
        "forwarded_for",
        "groups",
        "ip",
        "key",
        "no_cache",
        "nodes",
        "outcome",
        "path",
        "plan",
        "reply",
        "req",
        "rid",
        "settled",
        "stage",
        "start",
        "status",
        "upstream_headers",
        "verdict",
        "waited",
        "way",
        "wrote",
    )

    def __init__(self, req: HttpRequest, path: str | None, start: float) -> None:
        self.req = req
        self.path = path
        """The path to forward to (``forward_paths``), or None for the node's own URL."""
        self.start = start
        self.rid = ""
        """The request id (the client's ``X-Request-Id``, or ours)."""
        self.ip = ""
        """The client's address (after the trusted-proxy rule)."""
        self.forwarded_for: str | None = None
        """The client's ``X-Forwarded-For``, as it came."""
        self.key: ApiKey | None = None
        self.call: RpcCall | None = None
        """The JSON-RPC call or batch (None for ``GET`` and a forwarded path)."""
        self.plan: Plan | None = None
        """A single call's plan (route, group, TTL, cache key)."""
        self.deadline: float | None = None
        """The client's own deadline (``X-RPC-Timeout``), when sooner than ours."""
        self.no_cache = False
        """``Cache-Control: no-cache``: the answer is not read from the cache."""
        self.upstream_headers: dict[str, str] | None = None
        """The headers a node is sent, made when the first node is asked."""
        self.verdict = ""
        """The cache's: ``hit``, ``miss``, ``coalesced``, ``bypass``, or empty (not cacheable)."""
        self.groups: tuple[str, ...] = ()
        """The groups of backends that served (or were to)."""
        self.nodes: tuple[str, ...] = ()
        """The nodes whose answers make this one (a hit's: the node that served it first)."""
        self.outcome: Outcome | None = None
        """How the forwarding ended, for an answer that passes a node's bytes on."""
        self.body: bytes | None = None
        """An answer made here (a hit, a coalesced read, a reassembled batch)."""
        self.status = 200
        """The HTTP status of :attr:`body`."""
        self.answer: HttpResponse | None = None
        """The response: set early by a refusal, else by the answer step."""
        self.reply: Reply | None = None
        """Where the response goes (the server's connection, or an awaiting host)."""
        self.stage: Cancellable | None = None
        """What is under way for this request, to stop when the client goes."""
        self.way: Way | None = None
        """The gateway taking it its way (set when it starts)."""
        self.waited = 0
        self.settled = False
        """Whether its head was settled with the other processes' (:mod:`.sharedheads`)."""
        """Times it waited for a block it was told exists (every node said ``null``)."""
        self.wrote: Write | None = None
        """The client's latest broadcast, while its reads must see it (read-your-writes)."""

    def __repr__(self) -> str:
        what = self.call.methods[:3] if self.call is not None else self.req.method
        return (
            f"<RequestContext {self.rid} {what} verdict={self.verdict or '-'} "
            f"groups={self.groups} nodes={self.nodes} answered={self.answer is not None}>"
        )

    def forwarded(self, outcome: Outcome) -> None:
        """Its forwarding ended: on with the way back (the forwarding's ``done``)."""
        way = self.way
        if way is not None:
            way.learned(self, outcome)

    def cancel(self) -> None:
        """The client went away: stop what is under way; no reply will be written."""
        self.reply = None
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.cancel()
