"""The fleet: which nodes may serve now, and why the others may not (sans-IO).

A node is *excluded* while an operator drains it (it finishes what it has, and gets nothing
new), while it is down, is on a fork (its head's hash is not the majority's: :mod:`.forks`),
lags the best head block by more than ``max_block_lag``, has a head older than
``max_head_age``, runs a version under ``min_version``, or was ejected (by the circuit
breaker after consecutive failures, or as an outlier whose success rate is well below its
peers'). Each exclusion has a bounded kind (for metric labels) and a sentence (for people).
When no node is usable the fleet fails open: it offers every node, least bad first, because
a possibly-wrong answer beats a certain error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .forks import ForkChoice
from .nodes import Health, Node, ProbeResult, parse_version

CANDIDATES_TTL = 0.05  # seconds the usable-node list is reused between changes

ExclusionKind = Literal[
    "drained", "ejected", "down", "forked", "lagging", "stale_head", "old_version"
]
EXCLUSION_KINDS: tuple[ExclusionKind, ...] = (
    "drained",
    "ejected",
    "down",
    "forked",
    "lagging",
    "stale_head",
    "old_version",
)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why a node may not serve now: a bounded kind, and the reason in words."""

    kind: ExclusionKind
    reason: str

    def __str__(self) -> str:
        return self.reason


class Fleet:
    """The nodes of one balancer and the rules for which of them may serve."""

    def __init__(self, nodes: list[Node], health: Health, *, fork_choice: bool = True) -> None:
        if not nodes:
            raise ValueError("a fleet needs at least one node")
        self.nodes = nodes
        self.health = health
        self._cached: tuple[float, list[Node], bool] | None = None
        self.forks = ForkChoice()
        self.fork_choice = fork_choice
        """Whether probes' head hashes are compared (``consistency.fork_choice``)."""
        for node in nodes:
            node.on_change = self.invalidate
            node.on_probe = self._probed if fork_choice else None
            node.breaker.slow_start = health.slow_start

    def _probed(self, node: Node, result: ProbeResult) -> None:
        self.forks.saw(node, result, self.nodes)

    def invalidate(self) -> None:
        """Forget the cached candidates: a probe or an ejection changed the picture."""
        self._cached = None

    def replace(self, nodes: list[Node]) -> None:
        """Change the membership (DNS re-resolution): the caller keeps the state of nodes
        that stay by passing the same objects again."""
        if nodes:
            self.nodes = nodes
            for node in nodes:
                node.on_change = self.invalidate
                node.on_probe = self._probed if self.fork_choice else None
                node.breaker.slow_start = self.health.slow_start
            self.invalidate()

    def __repr__(self) -> str:
        return f"<Fleet {self.nodes!r}>"

    @property
    def forks_found(self) -> int:
        """Times a node was found on a fork (:mod:`.forks`)."""
        return self.forks.forks

    def best_head(self) -> int | None:
        """The highest head of the nodes not on a fork."""
        heads = [head for n in self.nodes if n.forked is None and (head := n.head()) is not None]
        return max(heads) if heads else None

    def lag(self, node: Node, best: int | None = None) -> int | None:
        best = self.best_head() if best is None else best
        head = node.head()
        if best is None or head is None:
            return None
        return max(0, best - head)

    def exclusion(self, node: Node, now: float, best: int | None = None) -> str | None:
        """Why ``node`` may not serve now, in words, or None when it may."""
        excluded = self.excluded(node, now, best)
        return None if excluded is None else excluded.reason

    def excluded(self, node: Node, now: float, best: int | None = None) -> Exclusion | None:
        """Why ``node`` may not serve now (its kind and its reason), or None when it may."""
        if node.drained:
            return Exclusion("drained", "drained by the operator: no new requests")
        breaker = node.breaker
        if now < breaker.ejected_until:
            return Exclusion(
                "ejected",
                f"ejected after {self.health.breaker_failures} consecutive failures "
                f"(back in {breaker.ejected_until - now:.0f}s; last: {node.last_error})",
            )
        probe = node.probe
        if probe is None:
            return None
        if not probe.ok:
            return Exclusion("down", f"down: {probe.error}")
        if node.forked is not None:
            return Exclusion("forked", node.forked)
        lag = self.lag(node, best)
        if lag is not None and lag > self.health.max_block_lag:
            return Exclusion(
                "lagging", f"{lag} blocks behind the best node (max {self.health.max_block_lag})"
            )
        if probe.head_age is not None:
            age = probe.head_age + max(0.0, now - probe.at)
            if age > self.health.max_head_age:
                return Exclusion(
                    "stale_head",
                    f"head block is {age:.0f}s old (max {self.health.max_head_age:.0f}s)",
                )
        minimum = self.health.min_version
        if minimum is not None:
            version = parse_version(probe.version)
            if version is None:
                return Exclusion("old_version", "version unknown (min_version is set)")
            if version < minimum:
                wanted = ".".join(map(str, minimum))
                return Exclusion(
                    "old_version", f"version {probe.version} is below min_version {wanted}"
                )
        return None

    def candidates(self, now: float) -> tuple[list[Node], bool]:
        """The nodes that may serve now, and whether that is a fail-open fallback.

        The answer is kept for ``CANDIDATES_TTL`` seconds (probes and ejections drop it at
        once): what only time changes (a head growing old, a cooldown ending) may be seen
        that much late, and the hot path does not re-judge every node on every request.
        """
        cached = self._cached
        if cached is not None and 0.0 <= now - cached[0] < CANDIDATES_TTL:
            return cached[1], cached[2]
        best = self.best_head()
        usable = [n for n in self.nodes if self.exclusion(n, now, best) is None]
        if usable:
            result = usable, False
        else:
            result = sorted(self.nodes, key=lambda n: self._badness(n, now, best)), True
        self._cached = (now, *result)
        return result

    def _badness(self, node: Node, now: float, best: int | None) -> tuple[float, ...]:
        probe = node.probe
        down = 1.0 if probe is not None and not probe.ok else 0.0
        lag = self.lag(node, best) or 0
        ejected = 1.0 if node.breaker.is_open(now) else 0.0
        return (
            1.0 if node.drained else 0.0,  # (failing open: a drained node last of all)
            down,
            1.0 if node.forked is not None else 0.0,
            ejected,
            float(lag),
            float(node.breaker.consecutive_failures),
            node.latency(now) or 0.0,
        )


@dataclass(frozen=True, slots=True)
class OutlierRule:
    min_requests: int = 20
    stdev_factor: float = 1.9
    min_success: float = 0.9
    base_ejection: float = 10.0
    max_ejection: float = 300.0
    max_ejected: float = 0.5


def eject_outliers(fleet: Fleet, now: float, rule: OutlierRule, jitter: float) -> list[Node]:
    """Eject nodes whose recent success rate is well below their peers': under
    ``min_success``, and under the mean of the *other* nodes by more than ``stdev_factor``
    of their standard deviation (and by at least 5 points). Comparing with the others
    rather than with a mean that includes the node itself keeps the rule meaningful in the
    small fleets API nodes come in (three nodes, one sick). The ejection lasts
    ``base_ejection`` doubled for each repeated one (up to ``max_ejection``), times
    ``jitter`` (about 1, so that balancers do not all bring a node back at once); at most
    ``max_ejected`` of the fleet is out at a time. Returns the nodes ejected now."""
    rated = [(n, 1.0 - n.error_rate()) for n in fleet.nodes if len(n.recent) >= rule.min_requests]
    if len(rated) < 2:
        return []
    out = sum(1 for n in fleet.nodes if n.breaker.is_open(now))
    allowed = int(len(fleet.nodes) * rule.max_ejected) - out
    ejected = []
    for node, rate in sorted(rated, key=lambda pair: pair[1]):
        if allowed <= 0 or rate >= rule.min_success or node.breaker.is_open(now):
            continue
        others = [r for n, r in rated if n is not node]
        mean = sum(others) / len(others)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in others) / len(others))
        if rate >= mean - max(rule.stdev_factor * stdev, 0.05):
            continue
        node.eject(now, rule.base_ejection * jitter, rule.max_ejection, "outlier")
        node.last_error = f"success rate {rate:.0%} against {mean:.0%} for its peers"
        node.recent.clear()  # judged afresh after it comes back
        ejected.append(node)
        allowed -= 1
    return ejected


class FleetSet:
    """Every group's fleet seen as one, for what goes over all the nodes (probes, the
    store, views, metrics): each node is judged by its own group's fleet (a hivemind node's
    head is never compared with a chain node's)."""

    def __init__(self, fleets: dict[str, Fleet]) -> None:
        if not fleets:
            raise ValueError("a fleet set needs at least one fleet")
        self.fleets = fleets
        self.health = next(iter(fleets.values())).health

    def __repr__(self) -> str:
        return f"<FleetSet {self.fleets!r}>"

    @property
    def nodes(self) -> list[Node]:
        if len(self.fleets) == 1:
            return next(iter(self.fleets.values())).nodes
        return [node for fleet in self.fleets.values() for node in fleet.nodes]

    def fleet_of(self, node: Node) -> Fleet:
        return self.fleets.get(node.group) or next(iter(self.fleets.values()))

    @property
    def forks_found(self) -> int:
        """Times a node of any group was found on a fork."""
        return sum(fleet.forks_found for fleet in self.fleets.values())

    def best_head(self) -> int | None:
        """None: heads are compared within a group only (pass None on to the methods)."""
        if len(self.fleets) == 1:
            return next(iter(self.fleets.values())).best_head()
        return None

    def lag(self, node: Node, best: int | None = None) -> int | None:
        return self.fleet_of(node).lag(node, best if len(self.fleets) == 1 else None)

    def exclusion(self, node: Node, now: float, best: int | None = None) -> str | None:
        return self.fleet_of(node).exclusion(node, now, best if len(self.fleets) == 1 else None)

    def excluded(self, node: Node, now: float, best: int | None = None) -> Exclusion | None:
        return self.fleet_of(node).excluded(node, now, best if len(self.fleets) == 1 else None)

    def candidates(self, now: float) -> tuple[list[Node], bool]:
        """Every group's usable nodes, and whether any group fails open."""
        usable: list[Node] = []
        failopen = False
        for fleet in self.fleets.values():
            nodes, fails = fleet.candidates(now)
            if fails:
                failopen = True
            else:
                usable += nodes
        return usable, failopen

    def invalidate(self) -> None:
        for fleet in self.fleets.values():
            fleet.invalidate()


def reached(nodes: list[Node], block: int) -> list[Node]:
    """The nodes whose head reached ``block`` (all of them when none did: then the answer is
    the best there is)."""
    there = []
    for node in nodes:
        head = node.head()
        if head is not None and head >= block:
            there.append(node)
    return there or nodes
