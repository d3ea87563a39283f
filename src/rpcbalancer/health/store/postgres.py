"""PostgreSQL, for people who already run it: two tables and an advisory lock.

The lease is a session-level advisory lock held on a connection of its own for the length
of a round: if the canary dies, PostgreSQL ends the session and frees the lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ...errors import ConfigError
from .base import ProbeRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS rpcbalancer_latest (
    node TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, record JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS rpcbalancer_history (
    id BIGSERIAL PRIMARY KEY, node TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    record JSONB NOT NULL);
CREATE INDEX IF NOT EXISTS rpcbalancer_history_at ON rpcbalancer_history (at);
"""
_SCHEMA_LOCK = 0x72706362  # serialises concurrent first starts (CREATE IF NOT EXISTS races)


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None
        self._leases: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "<PostgresStore>"

    async def open(self) -> None:
        try:
            import asyncpg  # an optional dependency: imported on use
        except ImportError:
            raise ConfigError(
                "store: postgresql:// needs asyncpg: pip install 'rpcbalancer[postgres]'"
            ) from None

        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=4, timeout=5.0, command_timeout=5.0
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def close(self) -> None:
        for name in list(self._leases):
            conn = self._leases.pop(name)
            await self._pool.release(conn)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def write(self, records: Sequence[ProbeRecord]) -> None:
        rows = [(r.node, r.at, r.to_json().decode()) for r in records]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO rpcbalancer_latest (node, at, record) VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (node) DO UPDATE SET at = excluded.at, record = excluded.record"
                " WHERE excluded.at >= rpcbalancer_latest.at",
                rows,
            )
            await conn.executemany(
                "INSERT INTO rpcbalancer_history (node, at, record) VALUES ($1, $2, $3::jsonb)",
                rows,
            )

    async def latest(self) -> dict[str, ProbeRecord]:
        rows = await self._pool.fetch("SELECT record::text FROM rpcbalancer_latest")
        records = (ProbeRecord.from_json(row[0]) for row in rows)
        return {r.node: r for r in records}

    async def history(self, since: float, node: str | None = None) -> list[ProbeRecord]:
        if node is None:
            rows = await self._pool.fetch(
                "SELECT record::text FROM rpcbalancer_history WHERE at >= $1 ORDER BY at, id", since
            )
        else:
            rows = await self._pool.fetch(
                "SELECT record::text FROM rpcbalancer_history WHERE at >= $1 AND node = $2"
                " ORDER BY at, id",
                since,
                node,
            )
        return [ProbeRecord.from_json(row[0]) for row in rows]

    async def prune(self, before: float) -> int:
        status = await self._pool.execute("DELETE FROM rpcbalancer_history WHERE at < $1", before)
        return int(status.split()[-1])

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        if name in self._leases:
            return True
        conn = await self._pool.acquire()
        try:
            taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(name))
        except BaseException:
            await self._pool.release(conn)
            raise
        if not taken:
            await self._pool.release(conn)
            return False
        self._leases[name] = conn
        return True

    async def release(self, name: str, owner: str) -> None:
        conn = self._leases.pop(name, None)
        if conn is not None:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(name))
            finally:
                await self._pool.release(conn)
