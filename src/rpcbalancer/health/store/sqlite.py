"""SQLite: the embedded default. WAL mode, safe for several processes on one machine.

Each call runs in a worker thread (sqlite3 blocks); one connection per store object,
serialised by a lock. The lease is a row taken in an IMMEDIATE transaction, so two
canaries on one file cannot both win it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .base import ProbeRecord

T = TypeVar("T")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS latest (node TEXT PRIMARY KEY, at REAL NOT NULL,"
    " record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " node TEXT NOT NULL, at REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS history_at ON history (at)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    " until REAL NOT NULL)",
)


def path_of(url: str) -> Path:
    """``sqlite:///rel.db`` is relative to the working folder, ``sqlite:////abs.db`` absolute."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"{url}: no database file in the URL")
    return Path(path)


class SqliteStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                if self._conn is None:
                    self._conn = self._connect()
                return work(self._conn)

        return await asyncio.to_thread(call)

    def _connect(self) -> sqlite3.Connection:
        if self.path.parent != Path():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def open(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(create)

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run(shut)

    async def write(self, records: Sequence[ProbeRecord]) -> None:
        rows = [(r.node, r.at, r.to_json().decode()) for r in records]

        def store(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO latest (node, at, record) VALUES (?, ?, ?) ON CONFLICT(node)"
                    " DO UPDATE SET at = excluded.at, record = excluded.record"
                    " WHERE excluded.at >= latest.at",
                    rows,
                )
                conn.executemany("INSERT INTO history (node, at, record) VALUES (?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(store)

    async def latest(self) -> dict[str, ProbeRecord]:
        rows = await self._run(lambda c: c.execute("SELECT record FROM latest").fetchall())
        records = (ProbeRecord.from_json(row[0]) for row in rows)
        return {r.node: r for r in records}

    async def history(self, since: float, node: str | None = None) -> list[ProbeRecord]:
        if node is None:
            query, args = "SELECT record FROM history WHERE at >= ? ORDER BY at, id", (since,)
        else:
            query = "SELECT record FROM history WHERE at >= ? AND node = ? ORDER BY at, id"
            args = (since, node)  # type: ignore[assignment]
        rows = await self._run(lambda c: c.execute(query, args).fetchall())
        return [ProbeRecord.from_json(row[0]) for row in rows]

    async def prune(self, before: float) -> int:
        return await self._run(
            lambda c: c.execute("DELETE FROM history WHERE at < ?", (before,)).rowcount
        )

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT owner, until FROM leases WHERE name = ?", (name,)
                ).fetchone()
                if row is not None and row[0] != owner and row[1] > now:
                    conn.execute("COMMIT")
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO leases (name, owner, until) VALUES (?, ?, ?)",
                    (name, owner, now + ttl),
                )
                conn.execute("COMMIT")
                return True
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return await self._run(take)

    async def release(self, name: str, owner: str) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))
        )
