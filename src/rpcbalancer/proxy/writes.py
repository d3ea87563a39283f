"""Read-your-writes: after a client's broadcast, its reads see it.

A transaction a node accepted is in that node's state at once (its pending block) and in the
others' only once it is in a block they have: a client that sends a transfer and then reads
its balance through a balancer may be answered by a node that has not seen it yet, or from a
cache entry kept before it. So, for ``consistency.read_your_writes_for`` seconds after a
client's broadcast is accepted, that client's reads that could see it (the chain preset's
:meth:`~rpcbalancer.health.chains.base.Chain.sees_writes`: not the chain's properties, a
block by number, the version, which are routed as anyone's)

* go to the node that accepted it while that node may serve and is answering (and accepted
  the client's other broadcasts of the window: its later broadcasts go there too; a read
  sent there is hedged like any read), else to a node whose
  head has passed the transactions' blocks (when known: the head of the accepting node plus
  one, or the block a synchronous broadcast names), else to any node;
* are never answered from a cache entry that could be older than the broadcast (an entry kept
  forever, an irreversible block, is the same before and after), nor shared with an identical
  read already in flight.

The client is its API key when it has one, else its address (``trusted_proxies`` decides
which). What is kept is bounded: a client's write is forgotten when its time is up, and the
oldest writes go first when there are more clients than :data:`MAX_CLIENTS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..fleet.nodes import Node
from ..jsonrpc import number_after

MAX_CLIENTS = 100_000
"""Clients whose writes are remembered at once, at most."""


class Write:
    """A client's accepted broadcasts of late: where, which block, until when they count."""

    __slots__ = ("block", "node", "only", "until")

    def __init__(self, node: Node, block: int | None, until: float, only: bool) -> None:
        self.node = node
        """The node that accepted the latest (it has it in its state at once)."""
        self.block = block
        """The highest block they go into (a lower bound), when known."""
        self.until = until
        self.only = only
        """Whether that node accepted every one of them (then it sees them all)."""

    def __repr__(self) -> str:
        return (
            f"Write({self.node.name}, block={self.block}, only={self.only}, until={self.until:.1f})"
        )


class RecentWrites:
    """The clients that broadcast lately, and where their writes went."""

    __slots__ = ("clock", "window", "writes")

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self.clock = clock
        self.writes: dict[str, Write] = {}

    def __repr__(self) -> str:
        return f"<RecentWrites {len(self.writes)} clients for {self.window:g}s>"

    def __len__(self) -> int:
        return len(self.writes)

    def wrote(self, client: str, node: Node, body: bytes) -> None:
        """``client``'s broadcast was accepted by ``node`` with the answer ``body``."""
        block = number_after(body, b'"block_num"') if b'"block_num"' in body else None
        if block is None:
            head = node.head()
            block = head + 1 if head is not None else None
        now = self.clock()
        writes = self.writes
        before = writes.pop(client, None)  # (re-inserted last: the dict is in age order)
        only = True
        if before is not None and now < before.until:
            only = before.only and before.node is node
            if before.block is not None and (block is None or before.block > block):
                block = before.block
        if len(writes) >= MAX_CLIENTS:
            del writes[next(iter(writes))]
        writes[client] = Write(node, block, now + self.window, only)

    def of(self, client: str, now: float) -> Write | None:
        """``client``'s write that still counts, if any."""
        write = self.writes.get(client)
        if write is None:
            return None
        if now >= write.until:
            del self.writes[client]
            return None
        return write
