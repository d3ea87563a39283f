"""``weighted``: smooth weighted round-robin (as nginx does it).

Each pick adds every candidate's weight to its running score, serves the highest score and
takes the total back off the winner: over any window, node ``i`` serves ``w_i / sum(w)``
of the requests, and its turns are spread out rather than bunched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ...config import StrategyConfig
from ..nodes import Node
from .base import BasePolicy, PickContext


class Weighted(BasePolicy):
    name = "weighted"
    how = "smooth weighted round robin: turns in proportion to weight"

    def __init__(self, params: StrategyConfig, rng: random.Random) -> None:
        super().__init__(params, rng)
        self._score: dict[int, float] = {}

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        total = 0.0
        best: Node | None = None
        best_score = 0.0
        for node in nodes:
            score = self._score.get(node.index, 0.0) + node.weight
            self._score[node.index] = score
            total += node.weight
            if best is None or score > best_score:
                best, best_score = node, score
        assert best is not None  # nodes is never empty
        if total <= 0:  # every weight is 0: drain nothing, share evenly
            return nodes[self.rng.randrange(len(nodes))]
        self._score[best.index] = best_score - total
        return best
