"""``least_conn``: the node with the fewest requests in flight (weight-adjusted)."""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class LeastConn(BasePolicy):
    name = "least_conn"
    how = "fewest requests in flight per unit of weight"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        if node.weight <= 0:
            return float("inf"), "weight 0 (drained)"
        return (node.inflight + 1) / node.weight, (
            f"(in flight {node.inflight} + 1) / weight {node.weight:g}"
        )

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        def load(node: Node) -> float:
            return (node.inflight + 1) / node.weight if node.weight > 0 else float("inf")

        lowest = min(load(n) for n in nodes)
        tied = [n for n in nodes if load(n) == lowest]
        return tied[self.rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
