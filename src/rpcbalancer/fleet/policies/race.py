"""``race``: the original design. Every request pings every node; the first healthy answer
wins and the request goes there.

The pinging is I/O and lives in the router; this class holds the sans-IO part: the winner
remembered for ``race_ttl`` seconds, and the choice for a retry (the fastest by estimate).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext, ms


class Race(BasePolicy):
    name = "race"
    how = "every request pings every node; the first healthy answer wins"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        latency = node.latency(now)
        kept = node is self._winner and now < self._until
        note = " (kept winner)" if kept else ""
        return latency, f"races; latency estimate {ms(latency)}{note}"

    _winner: Node | None = None
    _until = 0.0

    def remembered(self, nodes: Sequence[Node], now: float) -> Node | None:
        winner = self._winner
        if winner is not None and now < self._until and winner in nodes:
            return winner
        return None

    def remember(self, node: Node, now: float) -> None:
        if self.params.race_ttl > 0:
            self._winner, self._until = node, now + self.params.race_ttl

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        return min(nodes, key=lambda n: n.latency(ctx.now) or 0.0)
