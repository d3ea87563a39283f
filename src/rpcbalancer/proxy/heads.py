"""The head a client is told never goes back.

Nodes in one group stand at different heights: each passes the lag rule and still two
consecutive answers to ``get_dynamic_global_properties`` (or ``eth_blockNumber``) may come from
a node at block N and then from one at N - 3. A client that polls the head to follow the chain
(a block stream, a poller, a wallet waiting for its transaction) then sees the chain go back:
it fetches blocks twice, waits for one it already had, or takes an old head for a new one.

So the answer step holds the head. For each call that reports the head (the chain preset
says which: :meth:`~..health.chains.Chain.reports_head`), the group keeps the answer that
reported the highest head so far, under the call's key (its method and params, as the cache
keys it). An answer, from a node or from the cache, that reports a lower head is not passed
on: the kept one is, with the client's id. It costs no request to a node, and an answer with
a higher head moves the floor on at once.

The floor is the whole balancer's (one per group, in this process): every client sees one
chain, whichever node answers and whichever client asked before, as a single node would show
it. It lets go (the lower answer is passed on, and counted) only when every answer for
``consistency.hold_for`` seconds has been behind it: the nodes that reached it are gone or
were wrong, and a head that never moves would be worse than one that goes back once.

A block a client was told exists is never ``null`` either: when every node asked says
``null`` for a block at or below the head held (the nodes that have it are slow, or drifted
back), the read waits a fraction of a block and asks again, within its deadline
(:meth:`HeadFloor.told`, the gateway's ``learned``).

On EVM chains the head shows in more than ``eth_blockNumber``: a read at ``latest`` is answered
at the node's head, a receipt names its block. So a read at ``latest``, ``safe`` or
``finalized`` is sent with the tag resolved to a number (:meth:`HeadFloor.resolve`): the
highest of what clients were shown and of the block every serving node has, to a node known to
have it; and an ``eth_blockNumber`` behind a block an answer named (a receipt's) is answered
with that block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cache import has_result, result_of
from ..fleet.nodes import Node
from ..health.chains import Chain
from ..jsonrpc import dumps
from ..observe.counters import Stats

WAITS = 12
"""Times a read of a block clients were told exists is asked again, while every node says
``null`` (its deadline bounds it too)."""
MAX_KEYS = 256
"""Calls that report the head, kept at most (their params vary little: ``[]``, ``{}``)."""


class Held:
    """The highest head reported so far for one call, and its answer's result."""

    __slots__ = ("confirmed", "head", "node", "result")

    def __init__(self, head: int, result: bytes, node: str, confirmed: float) -> None:
        self.head = head
        self.result = result
        """The answer's ``result`` as JSON text."""
        self.node = node
        """The node that reported it."""
        self.confirmed = confirmed
        """When an answer last reported this head or a higher one."""

    def __repr__(self) -> str:
        return f"Held(head={self.head}, node={self.node!r})"


class HeadFloor:
    """One group's floor: per head-reporting call, the answer with the highest head."""

    __slots__ = (
        "chain",
        "clock",
        "final",
        "held",
        "hold_for",
        "kept",
        "named",
        "named_at",
        "named_by",
        "pinned",
        "released",
        "stats",
    )

    def __init__(
        self, chain: Chain, hold_for: float, clock: Callable[[], float], stats: Stats | None = None
    ) -> None:
        self.chain = chain
        self.hold_for = hold_for
        self.clock = clock
        self.stats = stats
        """Where ``/metrics`` and ``/status`` count them too (all groups, all workers)."""
        self.kept: dict[str, Held] = {}
        self.held = 0
        """Answers behind the floor that were replaced by the kept one."""
        self.released = 0
        """Answers behind the floor passed on after ``hold_for`` (the floor let go)."""
        self.named = 0
        """The highest block an answer showed exists (a receipt's, a block's)."""
        self.named_at = 0.0
        self.named_by = ""
        self.pinned = 0
        """The highest number ``latest`` was resolved to."""
        self.final = 0
        """The highest number ``safe`` and ``finalized`` were resolved to."""

    def __repr__(self) -> str:
        return f"<HeadFloor head={self.head} held={self.held} released={self.released}>"

    @property
    def head(self) -> int | None:
        """The highest head any answer of this group reported or showed (None before the
        first)."""
        head = max((held.head for held in self.kept.values()), default=None)
        named = self.named
        if named and (head is None or named > head):
            return named
        return head

    def adopt(self, key: str, head: int, result: bytes, node: str) -> None:
        """Another process kept ``head`` for ``key`` (:mod:`.sharedheads`): it is this one's
        floor too, when higher."""
        kept = self.kept.get(key)
        if kept is not None and kept.head >= head:
            return
        if kept is None and len(self.kept) >= MAX_KEYS:
            return
        self.kept[key] = Held(head, result, node, self.clock())

    def saw(self, block: int, node: Node) -> None:
        """An answer from ``node`` showed that ``block`` exists (a receipt's block): the
        node has it, and a client shown it must not be told a lower head."""
        known = node.head()
        now = self.clock()
        if known is None or known < block:
            node.observe_head(now, block)
        if block >= self.named:
            self.named = block
            self.named_at = now
            self.named_by = node.name

    def resolve(self, tag: str, nodes: list[Node]) -> int | None:
        """The number a read at ``tag`` is sent with, among the serving ``nodes``: for
        ``latest``, the highest of the head clients were shown, the number it was resolved
        to before, and the head every node has; for ``safe`` and ``finalized``, the highest
        of the number they were resolved to before and the finalized block every node
        reported (a safe block is at least that one). None (the tag goes as asked, and it is
        counted as let go) when no node is known to have that block, or nothing is known."""
        heads = [head for node in nodes if (head := node.head()) is not None]
        if not heads:
            return None
        if tag == "latest":
            number = max(self.head or 0, self.pinned, min(heads))
        else:
            finals = [n.irreversible for n in nodes if n.irreversible is not None]
            if not finals:
                return None
            number = max(self.final, min(finals))
        if number > max(heads):  # no node known to have it: its nodes are gone or behind
            self.released += 1
            if self.stats is not None:
                self.stats.heads_released += 1
            return None
        if tag == "latest":
            self.pinned = number
        else:
            self.final = number
        return number

    def told(self, name: str, params: Any) -> bool:
        """Whether a call of this name asks for a block at or below the head this group
        reported: a block clients were told exists (a ``null`` for it means "not here yet")."""
        number = self.chain.block_asked(name, params)
        head = self.head
        return number is not None and head is not None and 0 < number <= head

    def behind(self, key: str, body: bytes, node: str) -> Held | None:
        """The answer step, for a single call that reports the head (``key``: the call's,
        ``body``: its answer, from ``node``): None to pass the answer on (the highest head
        yet is kept), or the kept answer to send in its place when this one is behind."""
        head = self.chain.reported_head(body)
        if head is None:
            return None  # an error, or an answer that says nothing of the head
        now = self.clock()
        kept = self.kept.get(key)
        named = self.named
        if head < named and (kept is None or kept.head < named):
            text = self.chain.head_result(named)  # behind a block shown to exist
            if text is not None and now - self.named_at <= self.hold_for:
                self.held += 1
                if self.stats is not None:
                    self.stats.heads_held += 1
                return Held(named, text, self.named_by, now)
        if kept is not None and head < kept.head:
            if now - kept.confirmed <= self.hold_for:
                self.held += 1
                if self.stats is not None:
                    self.stats.heads_held += 1
                return kept
            self.released += 1  # every answer has been behind it for too long: let go
            if self.stats is not None:
                self.stats.heads_released += 1
        elif kept is not None and head == kept.head:
            kept.confirmed = now
            return None
        result = result_of(body)
        if not has_result(result):
            return None
        if kept is None and len(self.kept) >= MAX_KEYS:
            return None  # (a client inventing params: the calls already kept stay held)
        self.kept[key] = Held(head, bytes(memoryview(dumps(result))), node, now)
        return None
