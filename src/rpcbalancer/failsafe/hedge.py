"""When to hedge: how long to wait for a node before asking a second one (sans-IO).

A read that has not answered after about its node's p95 latency (``hedge.quantile``) is sent
to a second node as well; the first good answer wins. The wait is held between
``hedge.min_delay`` and ``hedge.max_delay``. A node with too few answers to know its quantile
(one the strategy seldom picks) is hedged after three times its predicted latency; one never
measured is not hedged. A broadcast is never hedged, and neither is a request with no second
node to ask.
"""

from __future__ import annotations

from typing import Protocol

from ..config import HedgeConfig


class Measured(Protocol):
    """What the hedge reads of a node (:class:`~..fleet.nodes.Node`)."""

    def quantile(self, q: float, min_samples: int, now: float | None = None) -> float | None: ...

    def predicted(self, now: float) -> float | None: ...


def hedge_delay(
    hedge: HedgeConfig | None, node: Measured, now: float, idempotent: bool, choices: int
) -> float | None:
    """Seconds to wait for ``node`` before the hedge, or None for no hedge (``choices``: the
    nodes the request could go to)."""
    if hedge is None or not hedge.enabled or not idempotent or choices < 2:
        return None
    quantile = node.quantile(hedge.quantile, hedge.min_samples, now)
    if quantile is None:
        predicted = node.predicted(now)
        if predicted is None:
            return None
        quantile = 3.0 * predicted
    return min(hedge.max_delay, max(hedge.min_delay, quantile))
