"""Reloads in one process (hosts/live.py, ``Balancer(predecessor=)``): what carries over, what
is refused, and that the balancer replaced closes what it kept alone and nothing it handed on.
Real fake nodes on loopback; the new configurations come from a loader, as from the file."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import orjson
import pytest

from rpcbalancer.config import Config, from_mapping
from rpcbalancer.errors import ConfigError
from rpcbalancer.hosts.live import Live
from rpcbalancer.proxy.gateway import HttpRequest
from rpcbalancer.sim import Behaviour, FakeNode

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


@pytest.fixture
async def nodes() -> Any:
    made = [FakeNode(name, Behaviour(latency=0.002), seed=i) for i, name in enumerate("abc")]
    for node in made:
        await node.start()
    yield made
    for node in made:
        await node.stop()


def config(urls: list[str], **more: Any) -> Config:
    base = {"nodes": urls, "store": "none", "timeouts": {"total": 1.0, "per_try": 0.5}}
    return from_mapping({**base, **more}, env={})


async def ask(live: Live, ident: int = 1) -> dict[str, Any]:
    assert live.gateway is not None
    body = orjson.dumps({**DGP, "id": ident})
    resp = await live.gateway.handle(HttpRequest("POST", "/", body=body, peer="127.0.0.1"))
    assert resp.status == 200, resp.body
    return dict(orjson.loads(resp.body))


async def test_a_reload_keeps_what_stays_and_refuses_what_cannot_be(nodes: list[Any]) -> None:
    urls = [node.url for node in nodes]
    wanted: list[Config | Exception] = []

    def loader() -> Config:
        got = wanted.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    first = config(urls[:2], cache={"enabled": True})
    async with Live(first, loader, weakref.WeakSet()) as live:
        for i in range(10):
            await ask(live, i)
        old = live.balancer
        assert old is not None
        kept = next(n for n in old.fleet.nodes if n.url == urls[0])
        kept.drain()
        # Refused: a file that does not validate, and a listen change; nothing changes.
        wanted.append(ConfigError("strategy: no such strategy"))
        with pytest.raises(ConfigError, match="strategy"):
            await live.reload()
        wanted.append(config(urls, listen={"port": 1}))
        with pytest.raises(ConfigError, match=r"listen\.port changed"):
            await live.reload()
        assert live.balancer is old
        # Applied: a node added, the strategy changed; the cache section unchanged.
        wanted.append(config(urls, cache={"enabled": True}, strategy="round_robin"))
        done = await live.reload()
        assert done["added"] == [urls[2]] and done["removed"] == []
        new = live.balancer
        assert new is not old and new.policy.name == "round_robin"
        again = next(n for n in new.fleet.nodes if n.url == urls[0])
        assert again is not kept and again.latencies is kept.latencies and again.drained
        assert new.answer_cache is old.answer_cache and new.stats is old.stats
        assert new.transport is old.transport
        assert (await ask(live, 99))["id"] == 99
        # The old one closes after the longest request could have ended: not what it
        # handed on (the successor still serves through its connections).
        await asyncio.sleep(old.config.timeouts.total + 1.3)
        assert not old.mine(old.transport) and old._stack is None
        for i in range(5):
            await ask(live, 100 + i)
        # A cache section that changed: a cache of its own.
        wanted.append(config(urls, cache={"enabled": True, "max_bytes": 1 << 20}))
        await live.reload()
        assert live.balancer is not None and live.balancer.answer_cache is not new.answer_cache


async def test_a_reload_that_comes_while_a_worker_starts_is_applied_by_it(
    nodes: list[Any], tmp_path: Any
) -> None:
    """A worker read its configuration at generation 0 of the workers' shared state; the
    supervisor bumped it (a SIGHUP) before the worker served: its first watch reloads."""
    from rpcbalancer.hosts.live import update_state

    urls = [node.url for node in nodes]
    update_state(tmp_path, lambda s: {**s, "generation": 1})
    loads = [config(urls)]
    live = Live(config(urls[:1]), lambda: loads.pop(0), weakref.WeakSet(), str(tmp_path), 0)
    async with live:
        assert live.generation == 0
        await live._watch()
        assert live.generation == 1 and loads == []
        assert live.balancer is not None
        assert len(live.balancer.fleet.nodes) == 3
    read_later = Live(config(urls[:1]), lambda: config(urls), weakref.WeakSet(), str(tmp_path))
    async with read_later:  # no generation given: the one there is taken as applied
        assert read_later.generation == 1
