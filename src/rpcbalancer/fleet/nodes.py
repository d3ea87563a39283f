"""Node state: what the balancer knows of each node (sans-IO).

Theory of operation
-------------------
A :class:`Node` is one backend address and everything learned about it, in three parts that
change for different reasons:

* **where it is** (:class:`~.address.NodeAddress`): fixed for the node's life;
* **how fast it answers** (:class:`~.estimators.Latencies`), from every try forwarded to it:
  latency by load, the peak EWMA, recent latencies, the histogram; a failed try counts as at
  least its timeout, so a node that fails fast never looks fast;
* **whether it may be trusted now** (:class:`~..failsafe.breaker.Breaker`): consecutive
  failures eject it for a cooldown, and it comes back through a slow start.

Besides these the node holds its load (tries in flight and when they began), a window of
recent outcomes (the outlier rule's error rate), and what the probes and the answers passing
through say of its chain: up or down, head block and its age, last irreversible block,
version. :class:`~.fleet.Fleet` decides from all of it which nodes may serve.

Nothing here does I/O or reads a clock: ``now`` (monotonic seconds) is passed in, so the
same code decides in the server, in Lambda and in tests.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import NodeConfig
from ..failsafe.breaker import Breaker
from .address import NodeAddress
from .estimators import LATENCY_BUCKETS, Latencies
from .latency import BUCKETS, LoadLatency

__all__ = ["LATENCY_BUCKETS", "Health", "Node", "ProbeResult", "parse_version"]

SWALLOWED = 4.0
"""A try abandoned after this many times its node's usual latency, unanswered while another
node answered, counts as swallowed (:meth:`Node.lost`)."""

_OUTCOME_WINDOW = 64  # recent outcomes kept per node for the error rate


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
    head_hash: str | None = None
    """The head block's hash (its id), where the chain reports it: fork choice compares it."""
    parent_hash: str | None = None
    """The hash of the block before the head, where the probe reads it."""


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
        "address",
        "breaker",
        "drained",
        "failures",
        "forked",
        "group",
        "index",
        "inflight",
        "irreversible",
        "last_error",
        "latencies",
        "on_change",
        "on_probe",
        "passive_at",
        "passive_head",
        "probe",
        "probes_behind",
        "probes_down",
        "probes_silent",
        "recent",
        "requests",
        "spec",
        "started_sum",
        "weight",
    )

    def __init__(
        self,
        index: int,
        spec: NodeConfig,
        *,
        address: str | None = None,
        group: str = "default",
        role: str | None = None,
    ) -> None:
        """``address`` pins the node to one IP address of its host name (DNS expansion);
        ``role`` names the group of a URL listed in several (see :meth:`NodeAddress.of`)."""
        self.index = index
        self.spec = spec
        self.address = NodeAddress.of(spec, address, role)
        self.group = group
        """The name of the group of backends it serves in (``default``)."""
        self.weight = spec.weight
        self.latencies = Latencies()
        self.breaker = Breaker()
        self.inflight = 0
        self.started_sum = 0.0
        """The start times of the tries in flight, added up: their mean age is cheap."""
        self.recent: deque[bool] = deque(maxlen=_OUTCOME_WINDOW)
        self.requests = 0
        """Tries begun."""
        self.failures = 0
        self.last_error: str | None = None
        self.probe: ProbeResult | None = None
        self.on_change: Callable[[], None] | None = None
        """Called when something that decides exclusion changed (set by the fleet)."""
        self.on_probe: Callable[[Node, ProbeResult], None] | None = None
        """Told of each probe after it is applied (set by the fleet: fork choice)."""
        self.forked: str | None = None
        """Why it is on another chain than the majority of its group, or None
        (:mod:`.forks`)."""
        self.passive_head: int | None = None
        """The head block this node's latest answer to a client reported."""
        self.passive_at = 0.0
        self.irreversible: int | None = None
        """The last irreversible block this node reported (probes, answers passing through);
        the answer cache keeps a block forever only when the node that served it had it
        irreversible."""
        self.drained = False
        """Drained by the operator: it gets no new requests (those it has finish)."""
        self.probes_down = 0
        """Probes that found it down (an error, a bad answer)."""
        self.probes_silent = 0
        """Probes it did not answer in time."""
        self.probes_behind = 0
        """Probe rounds that found it lagging the best node by more than the lag rule."""

    def __repr__(self) -> str:
        head = self.probe.head_block if self.probe else None
        return (
            f"<Node {self.name} {self.latencies!r} inflight={self.inflight} head={head} "
            f"fails={self.breaker.consecutive_failures}>"
        )

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def key(self) -> str:
        return self.address.key

    # -- tries ---------------------------------------------------------------------------

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

    def lost(self, now: float, started: float) -> None:
        """A try begun at ``started`` lost a hedge: another node answered the request, and
        this one had not after ``now - started`` seconds. Its latency was at least that: the
        estimates learn it (its quantiles, made of answers, do not). When that is
        :data:`SWALLOWED` times its usual latency or more (not the tail of a slow node: a
        request it swallowed), its recent outcomes count it as a failed one, so that a node
        that swallows requests is ejected as an outlier (its breaker is not touched)."""
        self._leave(started)
        elapsed = now - started
        usual = self.percentile(0.5)  # (its answers' median: what it takes when it answers)
        self.latencies.observe(now, elapsed)
        if usual is not None and elapsed >= SWALLOWED * usual:
            self.recent.append(False)

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
        self.latencies.tried(now, latency, sample, ok, load)
        self.recent.append(ok)
        breaker = self.breaker
        if breaker.trials:
            breaker.trials -= 1
        if ok:
            breaker.succeeded()
            return
        self.failures += 1
        self.last_error = error
        if health is None:
            breaker.consecutive_failures += 1  # counted; no rule to eject by
        elif breaker.failed(now, health.breaker_failures, health.breaker_cooldown):
            self._changed()

    def eject(self, now: float, base: float, cap: float, cause: str) -> float:
        """Take the node out of rotation (see :class:`~..failsafe.breaker.Breaker`); the
        seconds."""
        seconds = self.breaker.eject(now, base, cap, cause)
        self._changed()
        return seconds

    def mark_forked(self, why: str | None) -> None:
        """Found on a fork (``why``), or back on the majority's chain (None). What it said
        of finality on its fork is forgotten: its next probe says it again."""
        if why == self.forked:
            return
        if why is not None and self.forked is None:
            self.irreversible = None
            self.passive_head = None
        self.forked = why
        self._changed()

    def drain(self, drained: bool = True) -> None:
        """Drain the node (no new requests; those in flight finish), or put it back."""
        self.drained = drained
        self._changed()

    def inherit(self, before: Node) -> None:
        """What the node of the same URL learned in the configuration before this one (a
        reload): its estimates and breaker (shared: the tries it still has in flight end
        into them), its counts, what its probes and answers said, and whether it is drained.
        Its tries in flight stay its own."""
        self.latencies = before.latencies
        self.breaker = before.breaker
        self.recent = before.recent
        self.requests = before.requests
        self.failures = before.failures
        self.last_error = before.last_error
        self.probe = before.probe
        self.passive_head = before.passive_head
        self.passive_at = before.passive_at
        self.irreversible = before.irreversible
        self.drained = before.drained
        self.forked = before.forked
        self.probes_down = before.probes_down
        self.probes_silent = before.probes_silent
        self.probes_behind = before.probes_behind

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def error_rate(self) -> float:
        return self.recent.count(False) / len(self.recent) if self.recent else 0.0

    # -- latency, as the strategies and the hedge read it --------------------------------

    @property
    def model(self) -> LoadLatency:
        return self.latencies.model

    @property
    def ewma(self) -> float | None:
        return self.latencies.ewma

    def observe_latency(self, now: float, sample: float, load: int = 1) -> None:
        """A latency seen by a probe or a race ping (a try's goes through :meth:`end`)."""
        self.latencies.observe(now, sample, load)

    def latency(self, now: float, decay: float = 10.0) -> float | None:
        """The peak EWMA, fading while the node is idle (see :meth:`Latencies.faded`)."""
        return self.latencies.faded(now, decay)

    def quantile(self, q: float, min_samples: int, now: float | None = None) -> float | None:
        return self.latencies.quantile(q, min_samples, now)

    def percentile(self, q: float) -> float | None:
        return self.latencies.percentile(q)

    def ramp(self, now: float) -> float:
        return self.breaker.ramp(now)

    def predicted(self, now: float) -> float | None:
        """The latency of a request sent to this node now (seconds): the model's at the load
        it would go under, and never less than the mean age of the tries still out (a node
        that hangs is avoided before its tries time out). None before any answer."""
        predicted = self.latencies.model.predict(self.inflight + 1)
        if predicted is None:
            return None
        inflight = self.inflight
        if inflight:
            age = now - self.started_sum / inflight
            if age > predicted:
                return age
        return predicted

    def answering(self, now: float) -> bool:
        """False when its last try failed (or was swallowed: abandoned unanswered after
        :data:`SWALLOWED` times its usual latency), or while the tries out to it have waited,
        on average, that long: it is not answering now. A request that would go to it alone
        (a read following the client's write) goes elsewhere until it answers again."""
        recent = self.recent
        if recent and not recent[-1]:
            return False
        inflight = self.inflight
        if not inflight:
            return True
        expected = self.latencies.model.predict(inflight)
        return expected is None or now - self.started_sum / inflight <= SWALLOWED * expected

    def predicted_cost(self, now: float) -> float:
        """The ``fastest`` strategy's cost (lower wins): :meth:`predicted` / weight, and
        during a slow start also / the ramp, except for a ramp's share of the calls
        (:meth:`Breaker.slowed`); 0 for a node never measured (explore it), infinite at
        weight 0. In one call: it runs for every node of every request."""
        weight = self.weight
        if weight <= 0:
            return math.inf
        table = self.latencies.model.table()
        if table is None:
            return 0.0
        inflight = self.inflight
        b = inflight.bit_length()  # the bucket of a load of inflight + 1
        predicted = table[b if b < BUCKETS else BUCKETS - 1]
        if inflight:
            age = now - self.started_sum / inflight
            if age > predicted:
                predicted = age
        breaker = self.breaker
        slow = breaker.slow_start
        if slow > 0 and now < breaker.ramp_from + slow:
            weight *= breaker.slowed(now, inflight)
        return predicted / weight

    def load_cost(self, now: float, decay: float) -> float:
        """``latency(now, decay) x (inflight + 1) / (weight x ramp(now))``: the peak-EWMA
        rule's cost, in one call."""
        weight = self.weight
        if weight <= 0:
            return math.inf
        latency = self.latencies.faded(now, decay)
        if latency is None:
            return 0.0
        breaker = self.breaker
        if breaker.slow_start > 0 and now < breaker.ramp_from + breaker.slow_start:
            weight *= breaker.slowed(now, self.inflight)
        return latency * (self.inflight + 1) / weight

    # -- what the probes and the answers say of its chain --------------------------------

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
            self.latencies.restart()
            self.breaker.recovered(result.at)
        elif result.ok and self.breaker.answered_probe(result.at - result.latency, result.at):
            self.latencies.restart()  # reachable again after its ejection: the same
        self._changed()
        if self.on_probe is not None:
            self.on_probe(self, result)
        if result.ok:
            since = self.latencies.probed(result.at, result.latency)
            if since is not None and self.breaker.sped_up(since, result.at):
                self._changed()  # a slow link healed: back from its outlier ejection
        else:
            self.last_error = result.error
            error = result.error or ""
            if "no answer within" in error or "timed out" in error:
                self.probes_silent += 1
            else:
                self.probes_down += 1
