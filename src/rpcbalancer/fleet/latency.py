"""What a node's next answer will take, at the load it would be sent under (sans-IO).

Theory of operation
-------------------
A public API fleet is a dozen very different servers, each serving many requests at once.
Two things decide how long a request sent to one of them now will take: how fast the node
is (it changes: a node turns slow, recovers, has a heavy tail) and how much slower it gets
with the requests already in flight to it (most nodes: hardly at all, until they saturate).
Peak EWMA x (in flight + 1), the classic rule, gets both wrong here: it believes every tail
answer at once, fades an idle node's estimate to zero until it looks fastest, and prices a
node with four requests in flight as four times slower, which spills bursts onto slow nodes.

:class:`LoadLatency` learns both from the answers passing through, with no call of its own:
``log(latency) = level + shape[b]``, where ``b`` is the bucket of the load the request was
sent under (1, 2, 3-4, 5-8, ... requests in flight, this one included) and ``shape[0] = 0``.
Each answer moves ``level`` toward what it saw (an exponentially weighted mean of log
latency, so one tail answer moves it a little and a real change in a few answers; a sample
after a long silence, such as a probe of an idle node, counts for more). An answer sent
under load also moves its bucket's ``shape``, measured from the recent answers sent alone:
how much slower the node is under that load, whatever its level is now, so a node that
saturates keeps shedding load and one that does not keeps its traffic. An unseen load
borrows the nearest lighter bucket's shape, and shapes fade back toward 1 over a minute, so
a load once found slow (and avoided since) is tried again.

:meth:`LoadLatency.predict` is then the latency of a request sent now at a given load, and
the router never waits to see a node turn slow: the mean age of the node's requests still in
flight is a lower bound that rises while they hang (see ``Node.predicted``).
"""

from __future__ import annotations

import math

BUCKETS = 8
"""Loads 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, 65+ (requests in flight, the new one included)."""
ALPHA = 0.1
"""Weight of one answer in the level: about the last ten answers decide it."""
SHAPE_ALPHA = 0.1
"""Weight of one answer in its load bucket's shape."""
SHAPE_TAU = 60.0
"""Seconds over which a shape fades back toward 1 unless answers keep it up."""
TAU = 5.0
"""Seconds after which an old level counts for little against a new answer (an idle node
is judged on its next answer, a probe's included, not on what it did minutes ago)."""
FLOOR = 1e-4
"""Latencies below 0.1 ms count as 0.1 ms (a log needs a positive number)."""


def bucket(load: int) -> int:
    """The bucket of a load of ``load`` requests in flight (1 -> 0, 2 -> 1, 3-4 -> 2...)."""
    b = (load - 1).bit_length() if load > 1 else 0
    return b if b < BUCKETS else BUCKETS - 1


class LoadLatency:
    """A node's latency as a function of its load, learned from answers (see the module)."""

    __slots__ = (
        "_at",
        "_base",
        "_base_at",
        "_decayed_at",
        "_level",
        "_predicted",
        "_seen",
        "_shape",
        "samples",
    )

    def __init__(self) -> None:
        self._level: float | None = None
        self._at = 0.0
        self._base: float | None = None
        """Log latency of the answers sent alone (load 1): what shapes are measured from."""
        self._base_at = 0.0
        self._shape = [0.0] * BUCKETS
        self._seen = [0] * BUCKETS
        self._decayed_at = 0.0
        self._predicted: list[float] | None = None
        """exp(level + shape[b]) per bucket, made when asked after a change."""
        self.samples = 0

    def __repr__(self) -> str:
        if self._level is None:
            return "<LoadLatency unmeasured>"
        pairs = zip(self._shape, self._seen, strict=True)
        shape = " ".join(f"{math.exp(s):.2f}" if seen else "-" for s, seen in pairs)
        return f"<LoadLatency {math.exp(self._level) * 1000:.1f}ms x [{shape}]>"

    def observe(self, now: float, latency: float, load: int = 1) -> None:
        """An answer that took ``latency`` seconds, sent with ``load`` requests in flight."""
        x = math.log(latency if latency > FLOOR else FLOOR)
        b = bucket(load)
        self.samples += 1
        self._predicted = None
        shape = self._shape
        seen = self._seen
        if now - self._decayed_at > 1.0:
            self._decay(now)
        if b == 0:
            base = self._base
            if base is None:
                self._base = x
            else:
                self._base = base + _alpha(now - self._base_at, seen[0] + 1) * (x - base)
            self._base_at = now
        else:
            # How much slower than alone: measured from recent answers sent alone (the
            # level, when none came lately), a plain mean of the first few, then weighted.
            anchor = self._base
            if anchor is None or now - self._base_at > 3 * TAU:
                anchor = self._level
            if anchor is not None:
                weight = max(SHAPE_ALPHA, 1.0 / (seen[b] + 2))  # the prior counts as one
                shape[b] += weight * (x - anchor - shape[b])
        seen[b] += 1
        level = self._level
        if level is None:
            self._level = x - shape[b]
        else:
            self._level = level + _alpha(now - self._at, self.samples) * (x - shape[b] - level)
        self._at = now

    def _decay(self, now: float) -> None:
        """Shapes fade back toward 1 (no slower under load) over ``SHAPE_TAU``: a load that
        was once slow, and is avoided since, is tried again in time."""
        if self._decayed_at:
            keep = math.exp(-(now - self._decayed_at) / SHAPE_TAU)
            self._shape = [value * keep for value in self._shape]
        self._decayed_at = now

    def start_over(self, now: float, latency: float) -> None:
        """The node is another now (its probes say so): its level is ``latency``, as if
        learned afresh (keep the shape: how load slows it)."""
        x = math.log(latency if latency > FLOOR else FLOOR)
        self._level = self._base = x
        self._at = self._base_at = now
        self._predicted = None
        self.samples = 1

    def restart(self) -> None:
        """Forget the level (a node back from down), keep the shape (how load slows it)."""
        self._level = self._base = None
        self._predicted = None
        self.samples = 0

    @property
    def level(self) -> float | None:
        """The latency at the lightest load (seconds), or None before any answer."""
        return None if self._level is None else math.exp(self._level)

    def predict(self, load: int = 1) -> float | None:
        """The latency of a request sent now with ``load`` in flight, or None before any
        answer."""
        table = self.table()
        return None if table is None else table[bucket(load)]

    def table(self) -> list[float] | None:
        """The predicted latency per load bucket (made once after each answer), or None
        before any answer: the hot path indexes it with ``bucket(load)``."""
        predicted = self._predicted
        if predicted is None:
            if self._level is None:
                return None
            level = self._level
            shapes = []
            last = 0.0
            for b in range(BUCKETS):
                if self._seen[b]:
                    last = self._shape[b]
                shapes.append(math.exp(level + last))
            predicted = self._predicted = shapes
        return predicted

    def shape(self, load: int) -> float:
        """How much slower than at the lightest load this node is under ``load``."""
        b = bucket(load)
        while b and not self._seen[b]:
            b -= 1  # an unseen load: like the nearest lighter one
        return math.exp(self._shape[b]) if b else 1.0


def _alpha(idle: float, samples: int) -> float:
    """The weight of a new answer in an estimate last moved ``idle`` seconds ago: at least
    ``ALPHA``; more after a silence (an idle node is judged on its next answer); a plain
    mean over the first ten."""
    alpha = ALPHA
    if idle > 0.0:
        alpha = max(alpha, 1.0 - math.exp(-idle / TAU))
    if samples <= 10:
        alpha = max(alpha, 1.0 / samples)
    return alpha
