"""One contract, every backend: SQLite (a file), Redis and PostgreSQL (real servers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from rpcbalancer.errors import ConfigError
from rpcbalancer.health.store import HealthStore, ProbeRecord, open_store
from rpcbalancer.health.store.sqlite import path_of


@pytest.fixture
async def make_store(store_url: str) -> AsyncIterator[Callable[[], Any]]:
    opened: list[HealthStore] = []

    async def make() -> HealthStore:
        store = open_store(store_url)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def record(node: str, at: float, **kw: Any) -> ProbeRecord:
    fields: dict[str, Any] = {
        "ok": True,
        "latency": 0.01,
        "head_block": 100,
        "version": "0.23.1",
        "version_doc": {"result": {"blockchain_version": "0.23.1"}},
        "canary": "test",
    }
    fields.update(kw)
    return ProbeRecord(node=node, at=at, **fields)


async def test_write_then_read_latest_and_history(make_store: Any) -> None:
    store = await make_store()
    now = time.time()
    await store.write([record("http://a", now - 20, head_block=1), record("http://b", now - 20)])
    await store.write([record("http://a", now - 10, head_block=2, ok=False, error="down")])
    latest = await store.latest()
    assert set(latest) == {"http://a", "http://b"}
    assert latest["http://a"].head_block == 2 and latest["http://a"].error == "down"
    assert latest["http://b"].version_doc == {"result": {"blockchain_version": "0.23.1"}}
    history = await store.history(now - 60)
    assert [(r.node, r.head_block) for r in history] == [
        ("http://a", 1),
        ("http://b", 100),
        ("http://a", 2),
    ] or sorted((r.node, r.head_block) for r in history) == [
        ("http://a", 1),
        ("http://a", 2),
        ("http://b", 100),
    ]
    assert [r.head_block for r in await store.history(now - 60, node="http://a")] == [1, 2]
    assert await store.history(now - 15) == [latest["http://a"]]


async def test_an_older_record_never_replaces_a_newer_one(make_store: Any) -> None:
    store = await make_store()
    now = time.time()
    await store.write([record("http://a", now, head_block=9)])
    await store.write([record("http://a", now - 30, head_block=1)])  # a slow canary's round
    assert (await store.latest())["http://a"].head_block == 9


async def test_prune_drops_old_history_only(make_store: Any) -> None:
    store = await make_store()
    now = time.time()
    await store.write([record("http://a", now - 100_000)])
    await store.write([record("http://a", now - 10)])
    assert await store.prune(now - 86_400) == 1
    assert len(await store.history(0)) == 1
    assert "http://a" in await store.latest()


async def test_schema_creation_is_idempotent_and_data_survives_restarts(make_store: Any) -> None:
    first = await make_store()
    await first.write([record("http://a", time.time())])
    await first.close()
    second = await make_store()
    await second.open()  # again: nothing breaks, nothing is lost
    assert "http://a" in await second.latest()


async def test_the_lease_is_exclusive(make_store: Any) -> None:
    one, two = await make_store(), await make_store()
    assert await one.acquire("round", "one", 30)
    assert not await two.acquire("round", "two", 30)
    await two.release("round", "two")  # not its lease: changes nothing
    assert not await two.acquire("round", "two", 30)
    await one.release("round", "one")
    assert await two.acquire("round", "two", 30)
    await two.release("round", "two")


async def test_a_dead_holders_lease_frees_itself(make_store: Any, store_url: str) -> None:
    holder, other = await make_store(), await make_store()
    assert await holder.acquire("round", "holder", 0.3)
    if store_url.startswith("postgresql"):
        await holder.close()  # the session ends: PostgreSQL frees the advisory lock
    else:
        time.sleep(0.4)  # noqa: ASYNC251 - the TTL must pass on the store's clock
    assert await other.acquire("round", "other", 30)


def test_store_urls() -> None:
    assert path_of("sqlite:///rel/health.db") == Path("rel/health.db")
    assert path_of("sqlite:////abs/health.db") == Path("/abs/health.db")
    with pytest.raises(ConfigError, match="unknown URL scheme"):
        open_store("mongodb://x")
