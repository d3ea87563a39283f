"""A node's circuit breaker: ejected after consecutive failures, back through a slow start
(sans-IO: the time comes in as ``now``).

``failures`` failures in a row eject the node for ``cooldown`` seconds; each ejection since the
node last stayed clean for :data:`CLEAN_AFTER` seconds doubles it (up to eight times the
cooldown for the breaker, up to the rule's cap for an outlier ejection). After a breaker
ejection the node gets one trial try: one more failure ejects it again; a probe answered
after the ejection began ends it early (the node is reachable again). An outlier ejection
runs its course, unless the node's probes show that the slowness that made it an outlier is
gone (:meth:`Breaker.sped_up`). A node coming back (from an ejection, or from down) takes a
share of its traffic that ramps from 10% to all of it over ``slow_start`` seconds, so that a
cold cache or a node still catching up is not flooded.
"""

from __future__ import annotations

import math
from random import random

CLEAN_AFTER = 300.0
"""Seconds without an ejection after which a node's earlier ejections are forgotten."""
TRIALS = 5
"""Real requests a node coming back is sent at once during its slow start, before it is
weighed at its own cost."""


class Breaker:
    __slots__ = (
        "cause",
        "consecutive_failures",
        "ejected_at",
        "ejected_by",
        "ejected_until",
        "ejections",
        "ramp_from",
        "slow_start",
        "trials",
    )

    def __init__(self, slow_start: float = 0.0) -> None:
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejected_at = 0.0
        self.cause = ""
        """What ejected the node last (``breaker``, ``outlier``)."""
        self.ejections = 0
        """Ejections since the node last stayed clean (they double the next one)."""
        self.ejected_by: dict[str, int] = {}
        """Ejections since start, by cause (``breaker``, ``outlier``): a metric."""
        self.slow_start = slow_start
        self.ramp_from = -1e18
        """When the node came back (from ejection or down): its share ramps up from here."""
        self.trials = 0
        """Real answers still wanted from a node coming back before it is judged on them
        (until then it knows the node from its probes only)."""

    def __repr__(self) -> str:
        return (
            f"<Breaker fails={self.consecutive_failures} until={self.ejected_until:.1f} "
            f"ejections={self.ejections}>"
        )

    def is_open(self, now: float) -> bool:
        """Whether the node is ejected now."""
        return now < self.ejected_until

    def succeeded(self) -> None:
        self.consecutive_failures = 0

    def failed(self, now: float, failures: int, cooldown: float) -> bool:
        """A try failed; True when this failure ejected the node."""
        self.consecutive_failures += 1
        if self.consecutive_failures < failures or now < self.ejected_until:
            return False
        self.eject(now, cooldown, cooldown * 8, "breaker")
        self.consecutive_failures = failures - 1  # one trial try after the cooldown
        return True

    def eject(self, now: float, base: float, cap: float, cause: str) -> float:
        """Eject for ``base`` seconds doubled per repeated ejection (up to ``cap``); the
        seconds."""
        if now - self.ejected_until > CLEAN_AFTER:
            self.ejections = 0
        seconds = float(min(cap, base * 2 ** min(self.ejections, 16)))
        self.ejected_until = now + seconds
        self.ejected_at = now
        self.cause = cause
        self.ejections += 1
        self.ejected_by[cause] = self.ejected_by.get(cause, 0) + 1
        self.ramp_from = self.ejected_until
        self.trials = TRIALS
        return seconds

    def answered_probe(self, started: float, now: float) -> bool:
        """A probe sent at ``started`` was answered well at ``now``: when that was after a
        breaker ejection began, the node answered after the failures that ejected it, so
        the ejection ends and the node comes back through a slow start, with one trial try
        (a failure ejects it again, for twice as long). True when it ended one. A node
        whose link flapped is back at the next probe, not when a doubled cooldown ends;
        one that fails requests but answers probes costs a failed try per probe. An
        outlier ejection (a success rate below its peers') runs its course: one good
        answer says nothing of a rate (but see :meth:`sped_up`)."""
        return self._end_early("breaker", started, now)

    def sped_up(self, since: float, now: float) -> bool:
        """The node's probes read far faster than its level, twice in a row, the first sent
        at ``since`` (:meth:`~..fleet.estimators.Latencies.probed`): when that was after an
        outlier ejection began, what made it an outlier was its slowness (tries it had not
        answered when another node had, counted as swallowed), and it is gone: a slow link
        healed. The ejection ends, with a slow start. True when it ended one. A node ejected
        for its errors, or one that swallows some requests and answers the rest as fast as
        ever, reads as its answers did: its ejection runs its course."""
        return self._end_early("outlier", since, now)

    def _end_early(self, cause: str, seen: float, now: float) -> bool:
        """End an ejection for ``cause`` now, through a slow start, when what shows the node
        well again was seen (sent) after it began."""
        if self.cause != cause or now >= self.ejected_until or seen <= self.ejected_at:
            return False
        self.ejected_until = now
        self.ramp_from = now
        self.trials = TRIALS
        return True

    def recovered(self, now: float) -> None:
        """Back from down: no ejection left, the slow start from now."""
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ramp_from = now
        self.trials = TRIALS

    def ramp(self, now: float) -> float:
        """The share of its full traffic the node takes now (0.1 .. 1)."""
        slow = self.slow_start
        if slow <= 0 or now >= self.ramp_from + slow:
            return 1.0
        return max(0.1, min(1.0, 0.1 + 0.9 * (now - self.ramp_from) / slow))

    def slowed(self, now: float, inflight: int) -> float:
        """What a strategy that ranks by cost multiplies the node's weight by now, with
        ``inflight`` tries out to it: for a :meth:`ramp`'s share of the calls, infinity
        while :attr:`trials` are wanted (the node is tried at once: a node known by its
        probes alone would lose to nodes known by their answers, since a probe reads
        slower than a request and one sample is noisy), then 1 (weighed at its own cost);
        the ramp for the rest of the calls. Dividing every cost by the ramp would leave a
        node that comes back idle until its ramp is nearly done."""
        ramp = self.ramp(now)
        if random() >= ramp:
            return ramp
        return math.inf if self.trials > inflight else 1.0
