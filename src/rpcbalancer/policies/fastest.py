"""``fastest`` (the default): power of two choices over peak-EWMA latency x load.

Two distinct nodes are drawn at random and the one with the lower cost serves, where
cost = latency estimate x (requests in flight + 1). Comparing two random nodes rather than
taking the global minimum keeps many balancers (or one balancer under a burst) from all
piling onto the same node at once, and still sends almost everything to fast nodes.
A node with no measurement yet costs nothing, so it is explored at once; the estimate of
an unused node fades (see ``Node.latency``), so a node that was slow is tried again later.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext


class Fastest(BasePolicy):
    name = "fastest"

    def cost(self, node: Node, now: float) -> float:
        if node.weight <= 0:
            return float("inf")
        latency = node.latency(now, self.params.decay)
        return (latency or 0.0) * (node.inflight + 1) / (node.weight * node.ramp(now))

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        count = len(nodes)
        if count == 1:
            return nodes[0]
        # One draw gives both indexes: the integer part picks the first node, the fraction
        # (uniform and independent of it) the second among the others.
        r = self.rng.random() * count
        i = int(r)
        j = int((r - i) * (count - 1))
        if j >= i:
            j += 1
        a, b = nodes[i], nodes[j]
        return a if self.cost(a, ctx.now) <= self.cost(b, ctx.now) else b
