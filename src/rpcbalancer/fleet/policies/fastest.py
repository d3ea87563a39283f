"""``fastest`` (the default): the node that will answer this request soonest.

With ``model: load`` (the default) each node's cost is the latency a request sent to it now
is predicted to take at the load it would meet (``Node.predicted``: learned per node from its
answers, see :mod:`..latency`, and never below the mean age of its tries still out), divided
by its weight and, during a slow start, by its ramp for all but a ramp's share of the
requests (a node coming back takes a trickle at once, and its first few tries go out
before it is judged on them). Every node is compared, up to ``choices`` (16): a public
fleet is a handful of very different nodes, where comparing two random ones would send a
share of the traffic to the slower of two slow nodes. A fleet larger than that is
sampled.

``model: peak_ewma`` is the classic rule (Finagle's, Envoy's), kept for comparison: peak-EWMA
latency x (in flight + 1) over ``choices`` random nodes (3). It fits large fleets of alike
servers that serve one request at a time; on API nodes, which serve many at once, it prices
four requests in flight as four times slower and spills bursts onto slow nodes.

A node with no measurement yet costs nothing, so it is explored at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext, ms

LOAD_CHOICES = 16
EWMA_CHOICES = 3


class Fastest(BasePolicy):
    name = "fastest"

    @property
    def how(self) -> str:  # type: ignore[override]
        if self.params.model == "peak_ewma":
            return "lowest latency x load: peak-EWMA latency x (in flight + 1) / (weight x ramp)"
        return "lowest predicted latency at the node's load / (weight x ramp)"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        # The cost most requests meet: divided by the whole ramp, without the slow start's
        # random share weighed at its own cost and its trial tries (Breaker.slowed), so
        # that /status and `top` show a steady choice.
        weight = node.weight * node.ramp(now)
        if self.params.model == "peak_ewma":
            latency = node.latency(now, self.params.decay)
            score = steady(latency, node.inflight + 1, weight)
            return score, (
                f"latency {ms(latency)} x (in flight {node.inflight} + 1) / "
                f"(weight {node.weight:g} x ramp {node.ramp(now):.2f})"
            )
        level = node.model.level
        shape = node.model.shape(node.inflight + 1)
        return steady(node.predicted(now), 1, weight), (
            f"predicted {ms(node.predicted(now))} (latency {ms(level)} x load "
            f"{shape:.2f} at {node.inflight + 1} in flight) / "
            f"(weight {node.weight:g} x ramp {node.ramp(now):.2f})"
        )

    def cost(self, node: Node, now: float) -> float:
        if self.params.model == "peak_ewma":
            return self._ewma_cost(node, now)
        return node.predicted_cost(now)

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        count = len(nodes)
        if count == 1:
            return nodes[0]
        now = ctx.now
        params = self.params
        cost: Callable[[Node, float], float]
        if params.model == "peak_ewma":
            choices = params.choices or EWMA_CHOICES
            cost = self._ewma_cost
        else:
            choices = params.choices or LOAD_CHOICES
            cost = Node.predicted_cost
        if count <= choices:
            # Compare every node, starting at a random one so that ties go round.
            start = int(self.rng.random() * count)
            best = nodes[start]
            best_cost = cost(best, now)
            for k in range(1, count):
                node = nodes[(start + k) % count]
                c = cost(node, now)
                if c < best_cost:
                    best, best_cost = node, c
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
            return a if cost(a, now) <= cost(b, now) else b
        sample = self.rng.sample(range(count), choices)
        return min((nodes[i] for i in sample), key=lambda node: cost(node, now))

    def _ewma_cost(self, node: Node, now: float) -> float:
        return node.load_cost(now, self.params.decay)


def steady(latency: float | None, load: int, weight: float) -> float:
    """A cost without the slow start's draws: ``latency x load / weight`` (0 unmeasured,
    infinite at weight 0)."""
    if weight <= 0:
        return math.inf
    return 0.0 if latency is None else latency * load / weight
