"""The node host names' resolution cache (:mod:`rpcbalancer.upstream.names`): a resolver
that is slow or down never delays a name already resolved."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from rpcbalancer.upstream.names import Names


class Resolver:
    """A resolver the test steers: its answers, whether it fails, and a gate that holds
    every lookup until opened (a slow resolver)."""

    def __init__(self) -> None:
        self.answers = {"node.test": ["10.0.0.1"]}
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        await self.gate.wait()
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return list(self.answers.get(host, []))


async def test_a_name_is_resolved_once_then_served_from_its_answer() -> None:
    resolver = Resolver()
    names = Names(ttl=60, resolver=resolver)
    assert await names.addresses("node.test", 443) == ["10.0.0.1"]
    assert await names.addresses("node.test", 443) == ["10.0.0.1"]
    assert resolver.calls == 1
    assert await names.addresses("127.0.0.1", 80) == ["127.0.0.1"]  # a literal: no lookup
    assert resolver.calls == 1
    assert names.view() == {"node.test": {"addresses": ["10.0.0.1"], "failing": False}}


async def test_callers_at_once_share_the_first_lookup() -> None:
    resolver = Resolver()
    resolver.gate.clear()
    names = Names(ttl=60, resolver=resolver)
    waiting = [asyncio.create_task(names.addresses("node.test", 80)) for _ in range(5)]
    await asyncio.sleep(0.01)
    resolver.gate.set()
    assert await asyncio.gather(*waiting) == [["10.0.0.1"]] * 5
    assert resolver.calls == 1


async def test_a_slow_lookup_after_the_ttl_runs_in_the_background() -> None:
    resolver = Resolver()
    names = Names(ttl=0.05, resolver=resolver)
    await names.addresses("node.test", 80)
    await asyncio.sleep(0.06)
    resolver.gate.clear()  # the resolver now takes as long as the test wants
    resolver.answers["node.test"] = ["10.0.0.2"]
    # The answer it has, at once (a wait here would hang: the gate is shut).
    got = await asyncio.wait_for(names.addresses("node.test", 80), 1.0)
    assert got == ["10.0.0.1"]
    assert resolver.calls == 2  # ...and a lookup started, one only
    await asyncio.wait_for(names.addresses("node.test", 80), 1.0)
    assert resolver.calls == 2
    resolver.gate.set()
    await asyncio.sleep(0.01)
    assert await names.addresses("node.test", 80) == ["10.0.0.2"]


async def test_a_failing_resolver_keeps_the_last_answer_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = Resolver()
    names = Names(ttl=0.02, resolver=resolver)
    await names.addresses("node.test", 80)
    resolver.failing = True
    with caplog.at_level(logging.WARNING, logger="rpcbalancer.upstream.names"):
        for _ in range(3):
            await asyncio.sleep(0.03)
            for _ in range(3):
                assert await names.addresses("node.test", 80) == ["10.0.0.1"]
                await asyncio.sleep(0)  # (the lookup in the background fails)
    assert names.view()["node.test"]["failing"] is True
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "cannot resolve node.test" in warned[0], warned
    # A failed lookup is retried after min(RETRY, ttl), not on every connection.
    assert resolver.calls == 1 + 3
    resolver.failing = False
    resolver.answers["node.test"] = ["10.0.0.3"]
    names._answers[("node.test", 80)].due = 0.0  # (RETRY passed)
    await names.addresses("node.test", 80)
    await asyncio.sleep(0.01)
    assert await names.addresses("node.test", 80) == ["10.0.0.3"]
    assert names.view()["node.test"]["failing"] is False


async def test_a_name_never_resolved_fails_with_the_reason() -> None:
    resolver = Resolver()
    resolver.failing = True
    names = Names(ttl=60, resolver=resolver)
    with pytest.raises(socket.gaierror, match="Temporary failure"):
        await names.addresses("node.test", 80)
    resolver.failing = False
    with pytest.raises(socket.gaierror, match="no address"):
        await names.addresses("unknown.test", 80)
    # Once the resolver is back, the name resolves on the next connection.
    assert await names.addresses("node.test", 80) == ["10.0.0.1"]


async def test_refresh_looks_up_the_names_due_without_a_connection() -> None:
    resolver = Resolver()
    names = Names(ttl=0.02, resolver=resolver)
    await names.addresses("node.test", 80)
    await names.addresses("127.0.0.1", 80)
    await names.refresh()
    assert resolver.calls == 1  # not due yet; a literal never
    await asyncio.sleep(0.03)
    resolver.answers["node.test"] = ["10.0.0.4"]
    await names.refresh()
    await asyncio.sleep(0.01)
    assert resolver.calls == 2
    assert names.view() == {"node.test": {"addresses": ["10.0.0.4"], "failing": False}}
    resolver.gate.clear()
    await asyncio.sleep(0.03)
    await names.refresh()
    names.close()  # (a lookup under way is cancelled, and forgotten)
    await asyncio.sleep(0.01)
    assert names._lookups == {}
