"""Fork choice: which chain a group's nodes are on, by the majority of their block hashes.

Every node of a group passes the lag rule and still one of them may be on another chain: a
minority fork, a node whose database went wrong, a node that will reorganise once it hears
from its peers. Its blocks have the right numbers and other hashes, and a client that reads
one block from it and the next from another sees a chain that does not link.

So each probe's head block is kept with its hash (and, where the chain gives it, its
parent's), per node and height, for the latest :data:`KEEP` heights. A node is judged at
its own head: the nodes with a hash at that height vote, and a node whose hash has fewer
votes than another is *forked* (excluded, kind ``forked``, until a later probe shows it on
the majority's chain: when it reorganises). A tie (two nodes, two hashes), or its vote
alone, decides nothing there: the height below, when read in the same round (the parent, a
block asked for), may; else the verdict stays as it was. When no other node's hash is known
at a node's head while another node has passed that height, :meth:`ForkChoice.wanted` names
the blocks to ask for, and a node ahead of all others is asked for its block where the next
one stands (the probe loop asks, one call each, and hands the hashes to
:meth:`ForkChoice.record`).

A forked node's head and finality count for nothing while it is excluded: a fork ahead of
the chain must not make the others look behind, nor let the cache keep its blocks forever.
What it cannot see: a node ahead of every other whose fork began above the height the
others stand at; until they reach its fork it is a fast node like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .nodes import Node, ProbeResult

KEEP = 128
"""Heights of block hashes kept (below the highest seen, older ones are dropped)."""
ASKS = 8
"""Block hashes asked for at most per probe round."""


class ForkChoice:
    """The hashes a group's nodes reported, by height, and the verdicts drawn from them."""

    __slots__ = ("forks", "fresh", "hashes", "heads", "top")

    def __init__(self) -> None:
        self.hashes: dict[int, dict[str, str]] = {}
        """Height -> node key -> the hash of that node's block at that height."""
        self.heads: dict[str, int] = {}
        """Node key -> the height of its latest head with a known hash."""
        self.fresh: dict[str, set[int]] = {}
        """Node key -> the heights of its hashes read since its latest probe (its head, the
        parent, what was asked): a node is judged on these only."""
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
        fresh = {head}
        if parent is not None and head > 0:
            self._put(key, head - 1, parent)
            fresh.add(head - 1)
        self.heads[key] = head
        self.fresh[key] = fresh
        self.judge(nodes)

    def record(self, node: Node, height: int, digest: str, nodes: Iterable[Node]) -> None:
        """The hash of ``node``'s block at ``height``, asked for (see :meth:`wanted`)."""
        self._put(node.key, height, digest)
        if height <= self.heads.get(node.key, -1):
            self.fresh.setdefault(node.key, set()).add(height)
        self.judge(nodes)

    def wanted(self, nodes: Iterable[Node]) -> list[tuple[Node, int]]:
        """Blocks to ask for so that every node's head can be judged (at most :data:`ASKS`):
        for a head no other node's hash is known at, the nodes not forked that passed that
        height; and a node ahead of all others is asked for its block at the height the
        next one stands at (a fork ahead shows there)."""
        present = {n.key: n for n in nodes}
        heads = {key: head for key, head in self.heads.items() if key in present}
        asks: list[tuple[Node, int]] = []
        for key, head in heads.items():
            if any(other != key for other in self.hashes.get(head, {})):
                continue  # judged at its head already
            others = [h for k, h in heads.items() if k != key]
            for other_key, other_head in heads.items():
                other = present[other_key]
                if other_key != key and other.forked is None and other_head > head:
                    asks.append((other, head))
            below = max(others, default=-1)
            if 0 <= below < head < below + KEEP and below not in self.fresh.get(key, ()):
                asks.append((present[key], below))
        return asks[:ASKS]

    def judge(self, nodes: Iterable[Node]) -> None:
        """Mark each node forked or not by the votes at the heights of its fresh hashes,
        its head first. At a height where some hash has more votes than the node's, it is
        forked; where its hash has the most, two at least, it is on the chain, and at its
        head that puts it back; a tie, or its vote alone, decides nothing there, and the
        height below it is looked at."""
        for node in nodes:
            key = node.key
            head = self.heads.get(key)
            if head is None:
                continue
            for height in sorted(self.fresh.get(key, ()), reverse=True):
                by = self.hashes.get(height, {})
                mine = by.get(key)
                if mine is None:
                    continue
                votes = Counter(by.values())
                best, most = votes.most_common(1)[0]
                if votes[mine] < most:
                    if node.forked is None:
                        self.forks += 1
                    node.mark_forked(
                        f"on a fork: its block {height} is {_short(mine)}, {most} of the "
                        f"{len(by)} nodes there have {_short(best)}"
                    )
                    break
                if most > 1 and sum(1 for n in votes.values() if n == most) == 1:
                    if height == head:
                        node.mark_forked(None)
                    break

    def _put(self, key: str, height: int, digest: str) -> None:
        self.hashes.setdefault(height, {})[key] = digest
        if height > self.top:
            self.top = height
            for old in [h for h in self.hashes if h <= height - KEEP]:
                del self.hashes[old]

    def _forget(self, key: str) -> None:
        for by in self.hashes.values():
            by.pop(key, None)
        self.fresh.pop(key, None)


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 14 else digest
