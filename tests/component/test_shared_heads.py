"""The head held across instances (proxy/sharedheads.py): two balancers sharing a real Redis
(the run's), in front of the same drifting nodes, and clients whose calls land on either, as
behind one DNS name."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from rpcbalancer.balancer import Balancer
from rpcbalancer.proxy.gateway import Gateway, HttpRequest

from .test_heads import DGP, fleet, head_of, went_back


async def two_instances(h: Any) -> list[Gateway]:
    """``h``'s gateway and another balancer's, of the same config (the same nodes)."""
    other = await h.stack.enter_async_context(Balancer(h.balancer.config))
    return [h.gateway, Gateway(other)]


async def client(gateways: list[Gateway], h: Any, calls: int, seed: int) -> list[int]:
    """Heads one client saw, each call on either instance, the nodes drifting under it."""
    rng = random.Random(seed)
    heads = []
    for i in range(calls):
        if i % 7 == 0:
            for node in h.nodes.values():
                node.set(lag=rng.randint(0, 6))
        body = orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": i})
        gateway = gateways[rng.randrange(len(gateways))]
        resp = await gateway.handle(HttpRequest("POST", "/", body=body, peer="127.0.0.1"))
        assert resp.status == 200, resp.body
        heads.append(head_of(resp.body))
        await asyncio.sleep(0.01)
    return heads


@pytest.fixture
async def clean_redis(redis_url: str) -> str:
    client = aioredis.from_url(redis_url)
    try:
        await client.delete("rpcbalancer:heads:steem:default")
    finally:
        await client.aclose()
    return redis_url


@pytest.mark.parametrize("share", [True, False])
async def test_a_client_on_either_instance_never_sees_the_head_go_back(
    harness: Any, clean_redis: str, share: bool
) -> None:
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        cache={"enabled": False, "url": clean_redis},  # (every answer from a node)
        consistency={"share": share},
    )
    gateways = await two_instances(h)
    seen = await asyncio.gather(*(client(gateways, h, 120, seed) for seed in range(4)))
    if share:
        assert [went_back(heads) for heads in seen] == [0, 0, 0, 0]
        assert all(heads[-1] > heads[0] for heads in seen)
    else:  # each instance holds its own head: across them it goes back
        assert sum(went_back(heads) for heads in seen) > 0


async def test_redis_gone_each_instance_holds_its_own_and_nothing_fails(harness: Any) -> None:
    h = await harness(
        fleet(),
        strategy="round_robin",
        hedge={"enabled": False},
        cache={"enabled": True, "url": "redis://127.0.0.1:9/0"},  # nothing listens there
    )
    gateways = await two_instances(h)
    heads = await client(gateways[:1], h, 30, 1)
    assert went_back(heads) == 0
    shared = h.balancer.shared_heads
    assert shared is not None and shared.down_since is not None and not shared.usable()
