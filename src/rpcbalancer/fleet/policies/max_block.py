"""``max_block``: the node with the highest head block (DoctorLai's ``max_jussi_number``).

Ties go to the lower latency estimate, so a fleet in sync still prefers its fastest node.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext, ms


class MaxBlock(BasePolicy):
    name = "max_block"
    how = "highest head block; ties to the lower latency"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        head = node.probe.head_block if node.probe and node.probe.head_block else None
        return (None if head is None else -float(head)), (
            f"head block {head if head is not None else 'unknown'}, latency {ms(node.latency(now))}"
        )

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        def key(node: Node) -> tuple[int, float]:
            head = node.probe.head_block if node.probe and node.probe.head_block else -1
            return (-head, node.latency(ctx.now) or 0.0)

        return min(nodes, key=key)
