"""Node state: what the balancer knows of each node, and which nodes may serve now.

Theory of operation
-------------------
Every node carries two kinds of knowledge, and both decide where a request goes:

* **Passive** measurements, from every request forwarded to it: its latency as a function of
  its load (:class:`~.latency.LoadLatency`: what the next answer will take with the requests
  now in flight, and never less than the mean age of those still out), a *peak EWMA* of its
  latency (the classic estimate, kept for comparison: a sample above the average replaces it
  at once, one below pulls it down slowly), the number of requests in flight, a window of
  recent outcomes and a count of consecutive failures. A failed try is recorded with a
  latency of at least the try's timeout, so a node that fails fast never looks fast.
* **Active** results, from the probes (and, later, the shared canary): whether the node is
  up, its head block and head time, its version.

From these, :class:`Fleet` says which nodes are *usable* now, and why the others are not:
down, lagging the best head block by more than ``max_block_lag``, a head older than
``max_head_age``, a version under ``min_version``, or ejected by the circuit breaker after
consecutive failures (for a cooldown that doubles with each repeated ejection). When no
node is usable the fleet fails open: it offers every node, least bad first, because a
possibly-wrong answer beats a certain error.

Nothing here does I/O or reads a clock: ``now`` (monotonic seconds) is passed in, so the
same code decides in the server, in Lambda and in tests.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import NodeConfig
from .latency import BUCKETS, LoadLatency

_OUTCOME_WINDOW = 64  # recent outcomes kept per node for the error rate
_LATENCY_WINDOW = 512  # recent successful latencies kept per node for percentiles
QUANTILE_EVERY = 0.1
"""Seconds between recomputations of a node's hedge quantile under load (see quantile)."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram kept per node (Prometheus buckets)."""
CLEAN_AFTER = 300.0  # seconds without ejection after which a node's ejections are forgotten


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one node."""

    at: float
    """Monotonic time the probe finished."""
    ok: bool
    latency: float
    error: str | None = None
    head_block: int | None = None
    head_age: float | None = None
    """Age of the head block (seconds) when probed."""
    irreversible_block: int | None = None
    version: str | None = None
    version_doc: Any = None
    jussi_num: int | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """The thresholds that decide whether a probed node may serve."""

    max_block_lag: int = 10
    max_head_age: float = 90.0
    min_version: tuple[int, ...] | None = None
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    slow_start: float = 10.0


def parse_version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    numbers = re.findall(r"\d+", text)
    return tuple(int(n) for n in numbers) if numbers else None


class Node:
    """The live state of one node (a backend address)."""

    __slots__ = (
        "_ewma",
        "_ewma_at",
        "_quantile",
        "_quantile_at",
        "_quantile_seen",
        "consecutive_failures",
        "ejected_by",
        "ejected_until",
        "ejections",
        "failures",
        "group",
        "headers",
        "hist",
        "host_header",
        "index",
        "inflight",
        "irreversible",
        "key",
        "last_error",
        "latencies",
        "latency_sum",
        "model",
        "name",
        "on_change",
        "passive_at",
        "passive_head",
        "probe",
        "ramp_from",
        "recent",
        "requests",
        "slow_start",
        "sni",
        "spec",
        "started_sum",
        "url",
        "verify_tls",
        "weight",
    )

    def __init__(
        self,
        index: int,
        spec: NodeConfig,
        *,
        address: str | None = None,
        group: str = "default",
    ) -> None:
        """``address`` pins the node to one IP address of its host name (DNS expansion):
        it connects there, and still sends the name as Host header and TLS SNI."""
        self.index = index
        self.spec = spec
        self.url = spec.url
        self.name = spec.name
        self.key = spec.key
        """The node's identity in the health store (see :attr:`NodeConfig.key`)."""
        self.group = group
        """The name of the group of backends it serves in (``default``)."""
        self.host_header: str | None = None
        self.sni: str | None = None
        if address is not None:
            parts = urlsplit(spec.url)
            literal = f"[{address}]" if ":" in address else address
            netloc = f"{literal}:{parts.port}" if parts.port else literal
            self.url = urlunsplit(parts._replace(netloc=netloc))
            self.name = f"{spec.name} [{address}]"
            self.key = self.url if spec.key == spec.url else f"{spec.key} [{address}]"
            self.host_header = parts.netloc.rpartition("@")[2]
            self.sni = parts.hostname if parts.scheme == "https" else None
        self.weight = spec.weight
        self.headers = spec.headers
        self.verify_tls = spec.verify_tls
        self._ewma: float | None = None
        self._ewma_at = 0.0
        self.model = LoadLatency()
        """Latency by load, learned from the answers (the ``fastest`` strategy's estimate)."""
        self.inflight = 0
        self.started_sum = 0.0
        """The start times of the tries in flight, added up: their mean age is cheap."""
        self.recent: deque[bool] = deque(maxlen=_OUTCOME_WINDOW)
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.requests = 0
        self.failures = 0
        self.hist = [0] * (len(LATENCY_BUCKETS) + 1)
        """Tries by latency, per bucket of :data:`LATENCY_BUCKETS` (the last: above them)."""
        self.latency_sum = 0.0
        self.ejected_by: dict[str, int] = {}
        """Ejections since start, by cause (``breaker``, ``outlier``)."""
        self.last_error: str | None = None
        self.probe: ProbeResult | None = None
        self.on_change: Callable[[], None] | None = None
        """Called when something that decides exclusion changed (set by the fleet)."""
        self.passive_head: int | None = None
        """The head block this node's latest answer to a client reported."""
        self.irreversible: int | None = None
        """The last irreversible block this node reported (probes, answers passing through);
        the answer cache keeps a block forever only when the node that served it had it
        irreversible."""
        self.passive_at = 0.0
        self.slow_start = 0.0
        self.ramp_from = -1e18
        """When the node came back (from ejection or down): its share ramps up from here."""
        self._quantile: dict[float, float] = {}
        self._quantile_seen = 0
        self._quantile_at = 0.0

    def __repr__(self) -> str:
        ewma = f"{self._ewma * 1000:.1f}ms" if self._ewma is not None else "?"
        head = self.probe.head_block if self.probe else None
        return (
            f"<Node {self.name} ewma={ewma} inflight={self.inflight} head={head} "
            f"fails={self.consecutive_failures}>"
        )

    # -- passive measurement ------------------------------------------------------------

    def begin(self, now: float) -> int:
        """A try goes out now; returns the load it goes under (in flight, itself included)."""
        self.requests += 1
        self.started_sum += now
        self.inflight += 1
        return self.inflight

    def _leave(self, started: float) -> None:
        inflight = self.inflight - 1
        if inflight <= 0:
            self.inflight = 0
            self.started_sum = 0.0  # (no rounding left over)
        else:
            self.inflight = inflight
            self.started_sum -= started

    def cancel(self, started: float) -> None:
        """A try begun at ``started`` was abandoned: no outcome to record."""
        self._leave(started)

    def end(
        self,
        now: float,
        latency: float,
        ok: bool,
        *,
        error: str | None = None,
        penalty: float = 0.0,
        health: Health | None = None,
        load: int = 1,
    ) -> None:
        """Record the outcome of a try begun with :meth:`begin` ``latency`` seconds ago,
        under ``load`` (what :meth:`begin` returned)."""
        self._leave(now - latency)
        self.record(now, latency, ok, error=error, penalty=penalty, health=health, load=load)

    def record(
        self,
        now: float,
        latency: float,
        ok: bool,
        *,
        error: str | None = None,
        penalty: float = 0.0,
        health: Health | None = None,
        load: int = 1,
    ) -> None:
        sample = latency if ok else max(latency, penalty)
        self.observe_latency(now, sample, load)
        self.hist[bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.recent.append(ok)
        if ok:
            self.latencies.append(latency)
            self.consecutive_failures = 0
            return
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        if (
            health is not None
            and self.consecutive_failures >= health.breaker_failures
            and now >= self.ejected_until
        ):
            self.eject(now, health.breaker_cooldown, health.breaker_cooldown * 8, "breaker")
            # After the cooldown the node gets one trial try before the next ejection.
            self.consecutive_failures = health.breaker_failures - 1

    def eject(self, now: float, base: float, cap: float, cause: str) -> float:
        """Take the node out of rotation for ``base`` seconds, doubled for each ejection
        since it last stayed clean for ``CLEAN_AFTER`` seconds, up to ``cap``; it returns
        through a slow start. Returns the seconds."""
        if now - self.ejected_until > CLEAN_AFTER:
            self.ejections = 0
        seconds = float(min(cap, base * 2 ** min(self.ejections, 16)))
        self.ejected_until = now + seconds
        self.ejections += 1
        self.ejected_by[cause] = self.ejected_by.get(cause, 0) + 1
        self.ramp_from = self.ejected_until
        if self.on_change is not None:
            self.on_change()
        return seconds

    def load_cost(self, now: float, decay: float) -> float:
        """``latency(now, decay) x (inflight + 1) / (weight x ramp(now))``: the fastest
        policy's cost, in one call (it runs for every candidate of every request)."""
        weight = self.weight
        if weight <= 0:
            return math.inf
        ewma = self._ewma
        if ewma is None:
            return 0.0
        age = now - self._ewma_at
        if age > 0.0:
            ewma *= math.exp(-age / decay)
        slow = self.slow_start
        if slow > 0 and now < self.ramp_from + slow:
            weight *= max(0.1, min(1.0, 0.1 + 0.9 * (now - self.ramp_from) / slow))
        return ewma * (self.inflight + 1) / weight

    def ramp(self, now: float) -> float:
        """The share of its full traffic a returning node takes now (0.1 .. 1)."""
        if self.slow_start <= 0 or now >= self.ramp_from + self.slow_start:
            return 1.0
        return max(0.1, min(1.0, 0.1 + 0.9 * (now - self.ramp_from) / self.slow_start))

    def quantile(self, q: float, min_samples: int, now: float | None = None) -> float | None:
        """A latency quantile of recent successful answers. Sorting the window on every
        request would cost more than the hedge it times: the value is recomputed after 16
        more answers and, when ``now`` is given, at most every ``QUANTILE_EVERY`` seconds
        (yet always after 4096 answers)."""
        if len(self.latencies) < min_samples:
            return None
        cached = self._quantile.get(q)
        fresh = self.requests - self._quantile_seen
        if (
            cached is None
            or fresh >= 4096
            or (fresh >= 16 and (now is None or now - self._quantile_at >= QUANTILE_EVERY))
        ):
            self._quantile.clear()
            self._quantile_seen = self.requests
            self._quantile_at = now if now is not None else 0.0
            cached = self.percentile(q)
            if cached is None:
                return None
            self._quantile[q] = cached
        return cached

    def predicted_cost(self, now: float) -> float:
        """The ``fastest`` strategy's cost (lower wins): :meth:`predicted` / (weight x
        slow-start ramp); 0 for a node never measured (explore it), infinite at weight 0.
        In one call: it runs for every node of every request."""
        weight = self.weight
        if weight <= 0:
            return math.inf
        table = self.model.table()
        if table is None:
            return 0.0
        inflight = self.inflight
        b = inflight.bit_length()  # the bucket of a load of inflight + 1
        predicted = table[b if b < BUCKETS else BUCKETS - 1]
        if inflight:
            age = now - self.started_sum / inflight
            if age > predicted:
                predicted = age
        slow = self.slow_start
        if slow > 0 and now < self.ramp_from + slow:
            weight *= max(0.1, min(1.0, 0.1 + 0.9 * (now - self.ramp_from) / slow))
        return predicted / weight

    def predicted(self, now: float) -> float | None:
        """The latency of a request sent to this node now (seconds): the model's at the load
        it would go under, and never less than the mean age of the tries still out (a node
        that hangs is avoided before its tries time out). None before any answer."""
        predicted = self.model.predict(self.inflight + 1)
        if predicted is None:
            return None
        inflight = self.inflight
        if inflight:
            age = now - self.started_sum / inflight
            if age > predicted:
                return age
        return predicted

    def observe_latency(self, now: float, sample: float, load: int = 1) -> None:
        """A latency seen by an answer, a probe or a race ping (sent under ``load``)."""
        self.model.observe(now, sample, load)
        if self._ewma is None or sample >= self._ewma:
            self._ewma = sample
        else:
            weight = math.exp(-max(0.0, now - self._ewma_at) / 10.0)
            self._ewma = self._ewma * weight + sample * (1.0 - weight)
        self._ewma_at = now

    def latency(self, now: float, decay: float = 10.0) -> float | None:
        """The latency estimate (seconds), fading toward zero while the node is not used,
        so an idle node is tried again rather than judged forever on old news."""
        if self._ewma is None:
            return None
        return self._ewma * math.exp(-max(0.0, now - self._ewma_at) / decay)

    @property
    def ewma(self) -> float | None:
        return self._ewma

    def percentile(self, q: float) -> float | None:
        """A percentile (0..1) of recent successful latencies, for status views."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def error_rate(self) -> float:
        return self.recent.count(False) / len(self.recent) if self.recent else 0.0

    # -- active probing -----------------------------------------------------------------

    def observe_head(self, now: float, head: int) -> None:
        """A head block this node reported in an answer passing through."""
        self.passive_head = head
        self.passive_at = now

    def head(self) -> int | None:
        """The node's head block by the latest word: its probe or its own latest answer,
        whichever is newer (a node that starts serving old data shows it at once)."""
        probe = self.probe
        if probe is None or not probe.ok or probe.head_block is None:
            return self.passive_head
        if self.passive_head is not None and self.passive_at > probe.at:
            return self.passive_head
        return probe.head_block

    def observe_irreversible(self, block: int) -> None:
        """A last irreversible block this node reported (it never moves back here)."""
        if self.irreversible is None or block > self.irreversible:
            self.irreversible = block

    def apply_probe(self, result: ProbeResult) -> None:
        recovered = result.ok and self.probe is not None and not self.probe.ok
        self.probe = result
        if result.irreversible_block is not None:
            self.observe_irreversible(result.irreversible_block)
        if recovered:
            # Back from down: start afresh from the probe's latency (the failure penalties
            # it collected while down would keep it idle for a minute), through a slow start.
            self._ewma = None
            self.model.restart()
            self.consecutive_failures = 0
            self.ejected_until = 0.0
            self.ramp_from = result.at
        if self.on_change is not None:
            self.on_change()
        if result.ok:
            self.observe_latency(result.at, result.latency)
        else:
            self.last_error = result.error
