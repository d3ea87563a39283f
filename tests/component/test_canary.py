"""The canary and the shared view, against fake nodes and real stores."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from rpcbalancer.balancer import Balancer
from rpcbalancer.config import from_mapping
from rpcbalancer.health.canary import LEASE
from rpcbalancer.sim import Behaviour, FakeNode

from ..conftest import free_port

DGP = "condenser_api.get_dynamic_global_properties"


@pytest.fixture
async def nodes() -> Any:
    started = [FakeNode(f"n{i}", Behaviour(), seed=i) for i in range(3)]
    for node in started:
        await node.start()
    yield started
    for node in started:
        await node.stop()


def balancer(nodes: list[FakeNode], store: str, **config: Any) -> Balancer:
    return Balancer(
        from_mapping(
            {
                "nodes": [n.url for n in nodes],
                "store": store,
                "probe": {"interval": 60, "timeout": 2},
                **config,
            },
            env={},
        )
    )


async def test_two_canaries_probe_each_node_once_per_round(
    nodes: list[FakeNode], store_url: str
) -> None:
    one, two = balancer(nodes, store_url), balancer(nodes, store_url)
    for b in (one, two):
        assert b.store is not None
        await b.store.open()
    try:
        ticks = await asyncio.gather(one.canary.tick(), two.canary.tick())
        assert sorted(ticks) == [False, True]  # the lease let one of them probe
        assert [n.counts[DGP] for n in nodes] == [1, 1, 1]
        # Right after a round, neither probes again: the store has fresh results.
        assert await one.canary.tick() is False and await two.canary.tick() is False
        assert [n.counts[DGP] for n in nodes] == [1, 1, 1]
        assert one.store is not None
        assert len(await one.store.latest()) == 3
    finally:
        for b in (one, two):
            await b.transport.aclose()
            assert b.store is not None
            await b.store.close()


async def test_once_waits_for_a_round_in_progress_then_runs_its_own(
    nodes: list[FakeNode], store_url: str
) -> None:
    holder, runner = balancer(nodes, store_url), balancer(nodes, store_url)
    assert holder.store is not None and runner.store is not None
    await holder.store.open()
    await runner.store.open()
    try:
        assert await holder.store.acquire(LEASE, "holder", 30)
        waiting = asyncio.create_task(runner.canary.once(wait=10))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits: rounds never overlap
        await holder.store.release(LEASE, "holder")
        records = await asyncio.wait_for(waiting, 10)
        assert len(records) == 3 and all(r.ok for r in records)
        await runner.canary.once()  # and --once never skips for a recent round
        assert [n.counts[DGP] for n in nodes] == [2, 2, 2]
    finally:
        for b in (holder, runner):
            await b.transport.aclose()
            assert b.store is not None
            await b.store.close()


async def test_a_balancer_routes_from_what_the_canary_saw(
    nodes: list[FakeNode], store_url: str
) -> None:
    writer = balancer(nodes, store_url)
    assert writer.store is not None
    await writer.store.open()
    await writer.canary.once()
    reader = balancer(
        nodes, store_url, canary="external", strategy="round_robin", store_refresh=0.1
    )
    async with reader:
        probes_before = sum(n.counts[DGP] for n in nodes)
        assert probes_before == 3  # the reader took the view and probed nothing itself
        nodes[1].set(lag=300)  # only the canary will notice
        await writer.canary.once()
        await asyncio.sleep(0.3)  # a store-view refresh or two
        stale = reader.fleet.nodes[1]
        reason = reader.fleet.exclusion(stale, reader.clock())
        assert reason is not None and "blocks behind" in reason
        candidates, failopen = reader.fleet.candidates(reader.clock() + 1)
        assert stale not in candidates and not failopen
    await writer.transport.aclose()
    await writer.store.close()


async def test_an_unreachable_store_never_stops_the_probing(
    nodes: list[FakeNode], caplog: pytest.LogCaptureFixture
) -> None:
    b = balancer(nodes, f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING):
        async with b:  # opening with the store down: probes for itself, serves
            assert all(n.probe is not None and n.probe.ok for n in b.fleet.nodes)
            assert await b.canary.tick() is True
            assert await b.canary.tick() is True
    assert caplog.text.count("unreachable") <= 2  # once per reader (view, canary), not per call
    assert "health store" in caplog.text
