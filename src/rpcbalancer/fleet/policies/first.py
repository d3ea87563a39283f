"""``first``: ordered failover; the first usable node in the configured order serves."""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class First(BasePolicy):
    name = "first"
    how = "the first usable node in the configured order"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        return nodes[0]
