"""The retry budget: how many extra tries (retries and hedges together) the fleet may take.

Every client request deposits ``ratio`` of a token, and a small floor of
``min_per_second`` tokens a second keeps a quiet balancer able to retry; every retry or
hedge withdraws a whole token. So under load, extra tries stay near ``ratio`` of the
traffic however sick the fleet is: a dying fleet is never hit with a retry storm. Sans-IO:
the time comes in as ``now``.

Hedges are optional (the first try may still answer) and retries are a request's last
chance (its try has failed), so hedges may not take the last ``reserve`` tokens: a burst of
hedges (a stall that made every request in flight look slow at once) cannot leave a failed
try without its retry.
"""

from __future__ import annotations


class RetryBudget:
    def __init__(
        self, ratio: float = 0.1, min_per_second: float = 3.0, burst: float = 20.0
    ) -> None:
        self.ratio = ratio
        self.reserve = min(burst / 4, burst - 1)
        """Tokens hedges leave for retries (none when the bucket holds but one)."""
        self.min_per_second = min_per_second
        self.burst = burst
        self._tokens = burst
        self._deposits = 0
        """Requests since the last refill: added up when tokens are next looked at (every
        request deposits, few withdraw; adding at once gives the same sum, since capping a
        sum of positive amounts once equals capping after each)."""
        self._at: float | None = None
        self.spent = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<RetryBudget {self.tokens:.1f} tokens, {self.spent} spent, {self.refused} refused>"

    @property
    def tokens(self) -> float:
        return min(self.burst, self._tokens + self._deposits * self.ratio)

    def _refill(self, now: float) -> None:
        tokens = self._tokens + self._deposits * self.ratio
        self._deposits = 0
        if self._at is not None and now > self._at:
            tokens += (now - self._at) * self.min_per_second
        self._tokens = min(self.burst, tokens)
        self._at = now

    def deposit(self, now: float) -> None:
        """A client request arrived."""
        if self._at is None:
            self._at = now
        self._deposits += 1

    def withdraw(self, now: float, reserve: float = 0.0) -> bool:
        """May one more try go out? Takes a token when it may, leaving at least ``reserve``
        tokens behind (hedges keep a reserve for retries)."""
        self._refill(now)
        if self._tokens >= 1.0 + reserve:
            self._tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False
