"""``max_block``: the node with the highest head block (DoctorLai's ``max_jussi_number``).

Ties go to the lower latency estimate, so a fleet in sync still prefers its fastest node.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class MaxBlock(BasePolicy):
    name = "max_block"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        def key(node: Node) -> tuple[int, float]:
            head = node.probe.head_block if node.probe and node.probe.head_block else -1
            return (-head, node.latency(ctx.now) or 0.0)

        return min(nodes, key=key)
