"""A node's latency, as every part that decides by it reads it (sans-IO).

:class:`Latencies` holds the estimators one answer feeds: the latency by load
(:class:`~.latency.LoadLatency`, the ``fastest`` strategy's), a *peak EWMA* (the classic
estimate, kept for ``model: peak_ewma``: a sample above the average replaces it at once, one
below pulls it down slowly, and it fades while the node is idle), a window of recent
successful latencies (the hedge's quantile, the status page's percentiles) and the histogram
the metrics export.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque

from .latency import LoadLatency

WINDOW = 512
"""Recent successful latencies kept per node for quantiles."""
QUANTILE_EVERY = 0.1
"""Seconds between recomputations of a quantile under load (see :meth:`Latencies.quantile`)."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram kept per node (Prometheus buckets)."""
SKEW_TRIES = 10
"""Tries answered since the last probe for a probe to teach how it reads against them."""
SKEW_ALPHA = 0.2
"""Weight of one probe in the skew: about the last five decide it."""
SKEW_MAX = math.log(4.0)
"""A probe is taken to read at most 4 times slower or faster than a request."""
SHIFT = 4.0
"""An idle node whose probes read this many times faster than its level, twice in a row,
has changed (a slow link healed): its level starts again from them."""


class Latencies:
    __slots__ = (
        "_ewma",
        "_ewma_at",
        "_fast_probe",
        "_fast_since",
        "_quantile",
        "_quantile_at",
        "_quantile_seen",
        "_seen_at_probe",
        "hist",
        "model",
        "probe_skew",
        "seen",
        "sum",
        "window",
    )

    def __init__(self) -> None:
        self.model = LoadLatency()
        """Latency by load, learned from the answers (the ``fastest`` strategy's estimate)."""
        self._ewma: float | None = None
        self._ewma_at = 0.0
        self.window: deque[float] = deque(maxlen=WINDOW)
        self.hist = [0] * (len(LATENCY_BUCKETS) + 1)
        """Tries by latency, per bucket of :data:`LATENCY_BUCKETS` (the last: above them)."""
        self.sum = 0.0
        """Every try's latency added up (the histogram's sum)."""
        self.seen = 0
        """Tries recorded: a quantile is recomputed after enough new ones."""
        self._quantile: dict[float, float] = {}
        self._quantile_seen = 0
        self._quantile_at = 0.0
        self.probe_skew = 0.0
        """How much slower a probe reads than a request to this node, as a log ratio."""
        self._seen_at_probe = 0
        self._fast_probe: float | None = None
        """The last probe of an idle node, when it read :data:`SHIFT` times below the level."""
        self._fast_since = 0.0
        """When that probe was sent."""

    def __repr__(self) -> str:
        ewma = f"{self._ewma * 1000:.1f}ms" if self._ewma is not None else "?"
        return f"<Latencies ewma={ewma} {self.model!r}>"

    def tried(self, now: float, latency: float, sample: float, ok: bool, load: int) -> None:
        """A try that took ``latency`` seconds under ``load`` ended; ``sample`` is what the
        estimates learn (a failure counts as at least the try's timeout)."""
        self.observe(now, sample, load)
        self.hist[bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.sum += latency
        self.seen += 1
        if ok:
            self.window.append(latency)

    def observe(self, now: float, sample: float, load: int = 1) -> None:
        """A latency seen by an answer, a probe or a race ping (sent under ``load``)."""
        self.model.observe(now, sample, load)
        ewma = self._ewma
        if ewma is None or sample >= ewma:
            self._ewma = sample
        else:
            weight = math.exp(-max(0.0, now - self._ewma_at) / 10.0)
            self._ewma = ewma * weight + sample * (1.0 - weight)
        self._ewma_at = now

    def probed(self, now: float, latency: float) -> float | None:
        """A probe answered in ``latency`` seconds. A probe does not read as a request does
        (another call, on a connection idle since the last one): measured here, ~15% slower.
        An idle node is known only by its probes, so judged by them raw it looks slower than
        the busy nodes it is compared with, and may never be sent a request again. So, while
        the node also answers requests, each probe learns how it reads against the level
        they set (:attr:`probe_skew`), and every probe is counted as the request it stands
        for. And an idle node whose level was set by a fault (a slow link, since healed)
        would take a probe after probe to come down, each moving it a third of the way:
        two probes in a row :data:`SHIFT` times below it, with no request between, start
        the level again from them. Returns when the first of the two was sent, when they
        did (the node is another now), else None."""
        level = self.model.level
        tries = self.seen - self._seen_at_probe
        if level is not None and tries >= SKEW_TRIES:
            skew = math.log(max(latency, 1e-4) / level)
            skew = min(SKEW_MAX, max(-SKEW_MAX, skew))
            self.probe_skew += SKEW_ALPHA * (skew - self.probe_skew)
        self._seen_at_probe = self.seen
        sample = latency * math.exp(-self.probe_skew)
        changed = None
        if tries or level is None or sample * SHIFT > level:
            self._fast_probe = None
        elif self._fast_probe is None:
            self._fast_probe = sample
            self._fast_since = now - latency
        else:  # twice in a row, and no request between: it is another node now
            self.model.start_over(now, math.sqrt(sample * self._fast_probe))
            self._fast_probe = None
            self._ewma = None
            changed = self._fast_since
        self.observe(now, sample)
        return changed

    def restart(self) -> None:
        """Forget the level (a node back from down), keep how load slows it (and how its
        probes read)."""
        self._ewma = None
        self.model.restart()

    @property
    def ewma(self) -> float | None:
        return self._ewma

    def faded(self, now: float, decay: float = 10.0) -> float | None:
        """The peak EWMA (seconds), fading toward zero while the node is not used, so that an
        idle node is tried again rather than judged forever on old news."""
        ewma = self._ewma
        if ewma is None:
            return None
        age = now - self._ewma_at
        return ewma * math.exp(-age / decay) if age > 0.0 else ewma

    def quantile(self, q: float, min_samples: int, now: float | None = None) -> float | None:
        """A latency quantile of recent successful answers. Sorting the window on every
        request would cost more than the hedge it times: the value is recomputed after 16
        more tries and, when ``now`` is given, at most every :data:`QUANTILE_EVERY` seconds
        (yet always after 4096 tries)."""
        if len(self.window) < min_samples:
            return None
        cached = self._quantile.get(q)
        fresh = self.seen - self._quantile_seen
        if (
            cached is None
            or fresh >= 4096
            or (fresh >= 16 and (now is None or now - self._quantile_at >= QUANTILE_EVERY))
        ):
            self._quantile.clear()
            self._quantile_seen = self.seen
            self._quantile_at = now if now is not None else 0.0
            cached = self.percentile(q)
            if cached is None:
                return None
            self._quantile[q] = cached
        return cached

    def percentile(self, q: float) -> float | None:
        """A percentile (0..1) of recent successful latencies, for status views."""
        if not self.window:
            return None
        ordered = sorted(self.window)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
