"""Fork choice: which chain a group's nodes are on, by the majority of their block hashes.

Every node of a group passes the lag rule and still one of them may be on another chain: a
minority fork, a node whose database went wrong, a node that will reorganise once it hears
from its peers. Its blocks have the right numbers and other hashes, and a client that reads
one block from it and the next from another sees a chain that does not link.

So each probe's head block is kept with its hash (and, where the chain gives it, its
parent's), per node and height, for the latest :data:`KEEP` heights. A node is judged at
its own head: the nodes with a hash at that height vote, and a node whose hash has fewer
votes than another is *forked* (excluded, kind ``forked``, until a later probe shows it on
the majority's chain: when it reorganises). A tie (two nodes, two hashes) decides nothing:
the verdict stays as it was. When no other node's hash is known at a node's head while
another node has passed that height, :meth:`ForkChoice.wanted` names the blocks to ask for
(the probe loop asks, one call each, and hands the hashes to :meth:`ForkChoice.record`).

A forked node's head and finality count for nothing while it is excluded: a fork ahead of
the chain must not make the others look behind, nor let the cache keep its blocks forever.
What it cannot see: a forked node that is ahead of every other is judged only when another
reaches its height; until then it is a fast node like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from .nodes import Node, ProbeResult

KEEP = 128
"""Heights of block hashes kept (below the highest seen, older ones are dropped)."""
ASKS = 8
"""Block hashes asked for at most per probe round."""


class ForkChoice:
    """The hashes a group's nodes reported, by height, and the verdicts drawn from them."""

    __slots__ = ("forks", "hashes", "heads", "top")

    def __init__(self) -> None:
        self.hashes: dict[int, dict[str, str]] = {}
        """Height -> node key -> the hash of that node's block at that height."""
        self.heads: dict[str, int] = {}
        """Node key -> the height of its latest head with a known hash."""
        self.top = -1
        self.forks = 0
        """Times a node was found on a fork."""

    def __repr__(self) -> str:
        return f"<ForkChoice heights={len(self.hashes)} forks={self.forks}>"

    def saw(self, node: Node, result: ProbeResult, nodes: Iterable[Node]) -> None:
        """A probe of ``node``: keep its head's hash (and its parent's), and judge again."""
        head, digest = result.head_block, result.head_hash
        if not result.ok or head is None or digest is None:
            return
        key = node.key
        before = self.hashes.get(head, {}).get(key)
        below = self.hashes.get(head - 1, {}).get(key)
        parent = result.parent_hash
        if (before is not None and before != digest) or (
            parent is not None and below is not None and below != parent
        ):
            self._forget(key)  # it reorganised: what it said before is no longer its chain
        for height in [h for h, by in self.hashes.items() if h > head and key in by]:
            del self.hashes[height][key]  # a node at ``head`` has no blocks above it
        self._put(key, head, digest)
        if parent is not None and head > 0:
            self._put(key, head - 1, parent)
        self.heads[key] = head
        self.judge(nodes)

    def record(self, node: Node, height: int, digest: str, nodes: Iterable[Node]) -> None:
        """The hash of ``node``'s block at ``height``, asked for (see :meth:`wanted`)."""
        self._put(node.key, height, digest)
        self.judge(nodes)

    def wanted(self, nodes: Iterable[Node]) -> list[tuple[Node, int]]:
        """Blocks to ask for so that every node's head can be judged: for a head no other
        node's hash is known at, the nodes not forked that passed that height (at most
        :data:`ASKS`)."""
        present = {n.key: n for n in nodes}
        asks: list[tuple[Node, int]] = []
        for key, head in self.heads.items():
            voters = self.hashes.get(head, {})
            if key not in present or any(other != key for other in voters):
                continue
            for other_key, other_head in self.heads.items():
                other = present.get(other_key)
                if other is not None and other.forked is None and other_head > head:
                    asks.append((other, head))
        return asks[:ASKS]

    def judge(self, nodes: Iterable[Node]) -> None:
        """Mark each node forked or not by the votes at its head. It is on the chain when
        its hash has more votes than any other (two at least); forked when another has more
        than its own; a tie, or its vote alone, changes nothing."""
        for node in nodes:
            head = self.heads.get(node.key)
            if head is None:
                continue
            by = self.hashes.get(head, {})
            mine = by.get(node.key)
            if mine is None:
                continue
            votes: dict[str, int] = {}
            for digest in by.values():
                votes[digest] = votes.get(digest, 0) + 1
            best, most = max(votes.items(), key=lambda item: item[1])
            if votes[mine] < most:
                if node.forked is None:
                    self.forks += 1
                node.mark_forked(
                    f"on a fork: its block {head} is {_short(mine)}, {most} of the "
                    f"{len(by)} nodes there have {_short(best)}"
                )
            elif most > 1 and sum(1 for n in votes.values() if n == most) == 1:
                node.mark_forked(None)

    def _put(self, key: str, height: int, digest: str) -> None:
        self.hashes.setdefault(height, {})[key] = digest
        if height > self.top:
            self.top = height
            for old in [h for h in self.hashes if h <= height - KEEP]:
                del self.hashes[old]

    def _forget(self, key: str) -> None:
        for by in self.hashes.values():
            by.pop(key, None)


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 14 else digest
