"""A log query too wide for one node's call, split into chunks across nodes.

Providers cap ``eth_getLogs`` (a block range of a few thousand blocks, or a number of
results) and a wide query is refused or times out. A route's ``split`` (the EVM preset:
10,000 blocks) makes a query over more blocks go out as chunks of that many blocks, each a
request of its own through the router (so to any node that may serve, with its retries and
hedges), at most :data:`IN_FLIGHT` at once, within the client's deadline. The logs come back
merged in block order, as one node would have given them; the first chunk that fails fails
the query, with the range it was asking for. The query's block tags (``latest``...) are
resolved once, at the group's best head, so every chunk asks for the same chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..callbacks import Cancellable
from ..jsonrpc import dumps, loads
from ..messages import error_response
from .context import RequestContext
from .forward import Forward
from .forwarding import Outcome
from .plan import Plan

IN_FLIGHT = 4
"""Chunks asked at once."""


class SplitWay(Protocol):
    """What a split query asks of the gateway."""

    forward: Forward

    def answer(self, ctx: RequestContext) -> None: ...


class Split:
    """One wide log query, as chunks."""

    __slots__ = (
        "chunks",
        "ctx",
        "next",
        "nodes",
        "over",
        "pending",
        "plan",
        "query",
        "results",
        "stages",
        "way",
    )

    def __init__(
        self,
        way: SplitWay,
        ctx: RequestContext,
        plan: Plan,
        query: dict[str, Any],
        chunks: list[tuple[int, int]],
    ) -> None:
        self.way = way
        self.ctx = ctx
        self.plan = plan
        self.query = query
        self.chunks = chunks
        self.results: list[list[Any] | None] = [None] * len(chunks)
        self.nodes: list[str] = []
        self.stages: list[Cancellable] = []
        self.next = 0
        self.pending = 0
        self.over = False

    def __repr__(self) -> str:
        done = sum(r is not None for r in self.results)
        return f"<Split {done}/{len(self.chunks)} chunks, {self.pending} out>"

    def start(self) -> Cancellable:
        for _ in range(min(IN_FLIGHT, len(self.chunks))):
            self._ask()
        return self

    def _ask(self) -> None:
        index = self.next
        self.next += 1
        first, last = self.chunks[index]
        member = {
            "jsonrpc": "2.0",
            "method": "eth_getLogs",
            "params": [{**self.query, "fromBlock": hex(first), "toBlock": hex(last)}],
            "id": index,
        }
        self.pending += 1
        done: Callable[[Outcome], None] = lambda outcome: self._ended(index, outcome)  # noqa: E731
        self.stages.append(self.way.forward.batch(self.ctx, self.plan, dumps(member), False, done))

    def _ended(self, index: int, outcome: Outcome) -> None:
        if self.over:
            return
        self.pending -= 1
        first, last = self.chunks[index]
        logs, why = _logs_of(outcome)
        if logs is None:
            self._fail(f"eth_getLogs for blocks {first} to {last} failed: {why}")
            return
        self.results[index] = logs
        if outcome.node is not None and outcome.node.name not in self.nodes:
            self.nodes.append(outcome.node.name)
        if self.next < len(self.chunks):
            self._ask()
        elif self.pending == 0:
            self._done()

    def _done(self) -> None:
        self.over = True
        ctx = self.ctx
        merged: list[Any] = []
        for logs in self.results:
            merged += logs or []
        call = ctx.call
        ident = call.first_id if call is not None else None
        ctx.body = dumps({"jsonrpc": "2.0", "result": merged, "id": ident})
        ctx.status = 200
        ctx.nodes = tuple(self.nodes)
        self.way.answer(ctx)

    def _fail(self, message: str) -> None:
        self.cancel()
        ctx = self.ctx
        ctx.answer = error_response("upstream", message, ctx.call)
        self.way.answer(ctx)

    def cancel(self) -> None:
        self.over = True
        for stage in self.stages:
            stage.cancel()


def _logs_of(outcome: Outcome) -> tuple[list[Any] | None, str]:
    """A chunk's logs, or None and why not."""
    resp = outcome.response
    if resp is None:
        return None, str(outcome.error) if outcome.error is not None else "no answer"
    try:
        doc = loads(resp.body)
    except (ValueError, RecursionError):
        return None, f"HTTP {resp.status}, not JSON"
    if not isinstance(doc, dict):
        return None, "not a JSON-RPC answer"
    if isinstance(doc.get("error"), dict):
        return None, str(doc["error"].get("message", "error"))[:200]
    result = doc.get("result")
    if not isinstance(result, list):
        return None, "its result is not a list of logs"
    return result, ""


def chunks_of(first: int, last: int, size: int) -> list[tuple[int, int]]:
    """``first`` to ``last`` (inclusive) in ranges of ``size`` blocks."""
    return [(start, min(last, start + size - 1)) for start in range(first, last + 1, size)]
