"""A node's circuit breaker: ejected after consecutive failures, back through a slow start
(sans-IO: the time comes in as ``now``).

``failures`` failures in a row eject the node for ``cooldown`` seconds; each ejection since the
node last stayed clean for :data:`CLEAN_AFTER` seconds doubles it (up to eight times the
cooldown for the breaker, up to the rule's cap for an outlier ejection). After a breaker
ejection the node gets one trial try: one more failure ejects it again. A node coming back
(from an ejection, or from down) takes a share of its traffic that ramps from 10% to all of it
over ``slow_start`` seconds, so that a cold cache or a node still catching up is not flooded.
"""

from __future__ import annotations

CLEAN_AFTER = 300.0
"""Seconds without an ejection after which a node's earlier ejections are forgotten."""


class Breaker:
    __slots__ = (
        "consecutive_failures",
        "ejected_by",
        "ejected_until",
        "ejections",
        "ramp_from",
        "slow_start",
    )

    def __init__(self, slow_start: float = 0.0) -> None:
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        """Ejections since the node last stayed clean (they double the next one)."""
        self.ejected_by: dict[str, int] = {}
        """Ejections since start, by cause (``breaker``, ``outlier``): a metric."""
        self.slow_start = slow_start
        self.ramp_from = -1e18
        """When the node came back (from ejection or down): its share ramps up from here."""

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
        self.ejections += 1
        self.ejected_by[cause] = self.ejected_by.get(cause, 0) + 1
        self.ramp_from = self.ejected_until
        return seconds

    def recovered(self, now: float) -> None:
        """Back from down: no ejection left, the slow start from now."""
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ramp_from = now

    def ramp(self, now: float) -> float:
        """The share of its full traffic the node takes now (0.1 .. 1)."""
        slow = self.slow_start
        if slow <= 0 or now >= self.ramp_from + slow:
            return 1.0
        return max(0.1, min(1.0, 0.1 + 0.9 * (now - self.ramp_from) / slow))
