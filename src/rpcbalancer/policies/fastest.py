"""``fastest`` (the default): power of d choices over peak-EWMA latency x load.

``choices`` distinct nodes (3 by default) are drawn at random and the one with the lower
cost serves, where cost = latency estimate x (requests in flight + 1) / (weight x slow-start
ramp). Comparing a few random nodes rather than taking the global minimum keeps many
balancers (or one balancer under a burst) from all piling onto the same node at once in a
large fleet; a fleet no larger than ``choices`` is compared whole.
A node with no measurement yet costs nothing, so it is explored at once; the estimate of
an unused node fades (see ``Node.latency``), so a node that was slow is tried again later.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext, ms


class Fastest(BasePolicy):
    name = "fastest"
    how = "lowest latency x load: latency estimate x (in flight + 1) / (weight x ramp)"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        latency = node.latency(now, self.params.decay)
        return self.cost(node, now), (
            f"latency {ms(latency)} x (in flight {node.inflight} + 1) / "
            f"(weight {node.weight:g} x ramp {node.ramp(now):.2f})"
        )

    def cost(self, node: Node, now: float) -> float:
        return node.load_cost(now, self.params.decay)

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        count = len(nodes)
        if count == 1:
            return nodes[0]
        now = ctx.now
        choices = self.params.choices
        if count <= choices:
            # A small fleet (API nodes usually come in a handful): compare every node. With
            # three nodes, two random choices would never see the best one a third of the
            # time and send that third to the second best.
            decay = self.params.decay
            start = int(self.rng.random() * count)  # ties go round, not to the first
            best = nodes[start]
            best_cost = best.load_cost(now, decay)
            for k in range(1, count):
                node = nodes[(start + k) % count]
                cost = node.load_cost(now, decay)
                if cost < best_cost:
                    best, best_cost = node, cost
            return best
        if choices == 2:
            # One draw gives both indexes: the integer part picks the first node, the
            # fraction (uniform and independent of it) the second among the others.
            r = self.rng.random() * count
            i = int(r)
            j = int((r - i) * (count - 1))
            if j >= i:
                j += 1
            a, b = nodes[i], nodes[j]
            return a if self.cost(a, now) <= self.cost(b, now) else b
        sample = self.rng.sample(range(count), choices)
        return min((nodes[i] for i in sample), key=lambda n: self.cost(n, now))
