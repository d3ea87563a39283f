"""``random``: a uniformly random usable node."""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class Random(BasePolicy):
    name = "random"
    how = "a random node (weighted)"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        return nodes[self.rng.randrange(len(nodes))]
