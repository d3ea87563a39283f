"""The health store: what the canary writes and every balancer reads.

One protocol, :class:`HealthStore`, with one small module per backend (SQLite, Redis,
PostgreSQL, ...). A store keeps the latest :class:`ProbeRecord` of each node and a history
of them (for status views), and a named lease so that only one canary round runs at a time
however many canaries share the store. Records carry wall-clock times, since the processes
sharing a store share no monotonic clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from ...fleet.nodes import ProbeResult


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe of one node, as stored."""

    node: str
    """The node's URL (the address-pinned URL for a DNS-expanded node)."""
    at: float
    """Unix time the probe finished."""
    ok: bool
    latency: float
    error: str | None = None
    head_block: int | None = None
    head_age: float | None = None
    irreversible_block: int | None = None
    version: str | None = None
    version_doc: Any = None
    head_hash: str | None = None
    parent_hash: str | None = None
    canary: str = ""
    """Who probed: host and process of the canary."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ProbeRecord:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("a probe record must be a JSON object")
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**fields)

    @classmethod
    def from_result(
        cls, node: str, result: ProbeResult, *, mono_now: float, wall_now: float, canary: str
    ) -> ProbeRecord:
        shared = {name: getattr(result, name) for name in _SHARED}
        return cls(node=node, at=wall_now - (mono_now - result.at), canary=canary, **shared)

    def to_result(self, *, mono_now: float, wall_now: float) -> ProbeResult:
        shared = {name: getattr(self, name) for name in _SHARED}
        return ProbeResult(at=mono_now - max(0.0, wall_now - self.at), **shared)


# What a stored record and a live probe result have in common: all but the clock.
_SHARED = tuple(name for name in ProbeResult.__dataclass_fields__ if name != "at")


class HealthStore(Protocol):
    """Where probe results are shared. Every method may raise on an unreachable store;
    callers on the request path never let that reach a client."""

    url: str

    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent)."""

    async def close(self) -> None: ...

    async def write(self, records: Sequence[ProbeRecord]) -> None:
        """Replace each node's latest record and append all of them to the history."""

    async def latest(self) -> dict[str, ProbeRecord]:
        """The latest record of every node, by node URL."""

    async def history(self, since: float, node: str | None = None) -> list[ProbeRecord]:
        """Records at or after ``since`` (unix time), oldest first."""

    async def prune(self, before: float) -> int:
        """Drop history older than ``before``; returns how many records went."""

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``ttl`` seconds unless someone else holds it."""

    async def release(self, name: str, owner: str) -> None:
        """Give the lease back, if ``owner`` still holds it."""
