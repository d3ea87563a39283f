"""The canary: probe every node, record the results in the shared health store.

The original design's canary pings every node every minute and writes what it found to a
database that every balancer reads. Here a :class:`Canary` runs a probe round (every node,
the chain preset's calls, bounded per call, in concurrency and in total), applies the
results to its own fleet, and writes one :class:`ProbeRecord` per node to the store.

Several canaries may share a store (two processes, the scheduled Lambda, every
``rpcbalancer serve`` with its embedded canary): a round runs only under the store's lease,
so rounds never overlap, and the periodic :meth:`tick` also skips when another canary
finished a round less than an interval ago, so nodes are not probed N times over.
:meth:`once` (the ``--once`` command, the Lambda schedule) always runs a full round,
waiting for the lease if another round is under way.

The store is shared, not required: when it cannot be reached the canary still probes and
applies the results locally, and says so in the log once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from ..fleet.fleet import Fleet, FleetSet
from .probe import Prober
from .store import HealthStore, ProbeRecord, shown_url

log = logging.getLogger(__name__)

LEASE = "canary-round"


def canary_id() -> str:
    """Who a canary is: host, process, and a token (two canaries may share a process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class StoreHealth:
    """Logs a store outage once when it starts and once when it ends."""

    def __init__(self, store: HealthStore) -> None:
        self.store = store
        self.down = False

    def failed(self, what: str, exc: BaseException) -> None:
        if not self.down:
            log.warning(
                "health store %s unreachable (%s: %s: %s); working from local probes",
                shown_url(self.store.url),
                what,
                type(exc).__name__,
                exc,
            )
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info("health store %s reachable again", shown_url(self.store.url))
        self.down = False


class Canary:
    def __init__(
        self,
        fleet: Fleet | FleetSet,
        prober: Prober,
        store: HealthStore | None,
        *,
        interval: float,
        retention: float,
        round_deadline: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.fleet = fleet
        self.prober = prober
        self.store = store
        self.health = StoreHealth(store) if store is not None else None
        self.interval = interval
        self.retention = retention
        self.round_deadline = round_deadline
        self.clock = clock
        self.wall = wall
        self.owner = owner or canary_id()
        self.rounds = 0

    async def round(self, wait: float | None = None) -> list[ProbeRecord]:
        """Probe every node now, apply, and record (no lease: callers hold it). ``wait``: see
        :meth:`Prober.round` (a probe still out then is applied here when it ends, and
        recorded by a later round)."""
        results = await self.prober.round(self.round_deadline, wait=wait)
        mono, wall = self.clock(), self.wall()
        records = [
            ProbeRecord.from_result(
                node.key, result, mono_now=mono, wall_now=wall, canary=self.owner
            )
            for node, result in results
        ]
        self.rounds += 1
        if self.store is not None and self.health is not None and records:
            try:
                async with asyncio.timeout(5.0):
                    await self.store.write(records)
                    await self.store.prune(wall - self.retention)
                self.health.ok()
            except Exception as exc:
                self.health.failed("write", exc)
        return records

    async def tick(self) -> bool:
        """One periodic turn: run a round unless another canary just did or is doing one.
        Returns whether this canary probed."""
        if self.store is None or self.health is None:
            await self.round(wait=self.interval)
            return True
        try:
            async with asyncio.timeout(5.0):
                latest = await self.store.latest()
                # Only this fleet's nodes count: one store may serve several fleets.
                mine = {node.key for node in self.fleet.nodes}
                newest = max((r.at for url, r in latest.items() if url in mine), default=0.0)
                if self.wall() - newest < self.interval * 0.8:
                    self.health.ok()
                    return False  # a round is recent enough: the store view brings it here
                if not await self.store.acquire(LEASE, self.owner, self._lease_ttl()):
                    self.health.ok()
                    return False  # another canary is probing right now
            self.health.ok()
        except Exception as exc:
            self.health.failed("lease", exc)
            # The store is down: probe for ourselves, keep serving.
            await self.round(wait=self.interval)
            return True
        try:
            await self.round(wait=self.interval)
        finally:
            await self._release()
        return True

    async def once(self, wait: float | None = None) -> list[ProbeRecord]:
        """A full round now, waiting (up to ``wait`` seconds) for a round in progress."""
        if self.store is None:
            return await self.round()
        deadline = self.clock() + (wait if wait is not None else self._lease_ttl())
        while True:
            try:
                if await self.store.acquire(LEASE, self.owner, self._lease_ttl()):
                    break
            except Exception as exc:
                log.warning("cannot take the canary lease (%s); probing without it", exc)
                return await self.round()
            if self.clock() >= deadline:
                log.warning("another canary held the lease for too long; probing anyway")
                return await self.round()
            await asyncio.sleep(0.2)
        try:
            return await self.round()
        finally:
            await self._release()

    def _lease_ttl(self) -> float:
        # Long enough for a whole round, short enough that a dead canary's lease expires.
        return self.round_deadline + 10.0

    async def _release(self) -> None:
        if self.store is None:
            return
        try:
            await self.store.release(LEASE, self.owner)
        except Exception as exc:  # the lease expires by itself
            log.debug("could not release the canary lease: %s", exc)


class StoreView:
    """Brings the store's latest records into the local fleet: what any canary saw, this
    balancer uses, without having seen it itself. Records older than ``stale_after``
    seconds, or older than what the node already knows, are ignored."""

    def __init__(
        self,
        fleet: Fleet | FleetSet,
        store: HealthStore,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.health = StoreHealth(store)
        self.stale_after = stale_after
        self.clock = clock
        self.wall = wall
        self.fresh_at = 0.0
        """Wall time of the newest fresh record seen."""
        self._opened = False

    async def refresh(self) -> int:
        """Apply what is new in the store; returns how many nodes got news."""
        try:
            async with asyncio.timeout(3.0):
                if not self._opened:
                    await self.store.open()
                    self._opened = True
                latest = await self.store.latest()
        except Exception as exc:
            self.health.failed("read", exc)
            return 0
        self.health.ok()
        mono, wall = self.clock(), self.wall()
        applied = 0
        for node in self.fleet.nodes:
            record = latest.get(node.key)
            if record is None or wall - record.at > self.stale_after:
                continue
            self.fresh_at = max(self.fresh_at, record.at)
            result = record.to_result(mono_now=mono, wall_now=wall)
            if node.probe is not None and result.at <= node.probe.at + 0.001:
                continue  # we know this already (or something newer)
            node.apply_probe(result)
            applied += 1
        return applied

    def stale(self) -> bool:
        """Whether the store has brought nothing fresh lately (down, empty or abandoned)."""
        return self.health.down or self.wall() - self.fresh_at > self.stale_after
