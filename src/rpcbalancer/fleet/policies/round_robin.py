"""``round_robin``: every node in turn, skipping the ones that may not serve."""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class RoundRobin(BasePolicy):
    name = "round_robin"
    how = "takes turns in the configured order"
    _next = 0

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        # The position runs over configured indexes, so a node sitting out does not shift
        # the turn of the others.
        span = max(self._next, max(n.index for n in nodes)) + 1
        chosen = min(nodes, key=lambda n: (n.index - self._next) % span)
        self._next = chosen.index + 1
        return chosen
