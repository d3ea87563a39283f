"""``rpcbalancer demo``: a simulated fleet on loopback, a balancer in front of it, and light
background traffic, so a newcomer without network access sees it route around bad nodes.

The fleet is the one the tests use (:mod:`rpcbalancer.sim`): one fast node, one slow, one
flaky (a third of its answers are 503 pages or lock-timeout errors) and one lagging behind
the chain head. Within seconds the lagging node is excluded, the flaky one loses its share
to retries and outlier ejection, and the fast one carries most of the traffic; the status
page, ``/metrics`` and ``rpcbalancer top`` show it happening.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import tempfile
from pathlib import Path

import aiohttp

from ..config import from_mapping
from ..hosts.standalone import serve_async
from ..sim import Behaviour, FleetThread

FLEET = {
    "fast": Behaviour(latency=0.004, jitter=0.3),
    "slow": Behaviour(latency=0.120, jitter=0.3),
    "flaky": Behaviour(latency=0.010, jitter=0.3, fail_rate=0.2, sick_rate=0.15),
    "lagging": Behaviour(latency=0.006, jitter=0.3, lag=60),
}
CALLS: tuple[tuple[str, list[object]], ...] = (
    ("condenser_api.get_dynamic_global_properties", []),
    ("condenser_api.get_accounts", [["steemit"]]),
    ("condenser_api.get_block", [1]),
    ("condenser_api.get_content", ["steemit", "firstpost"]),
)


async def _traffic(url: str, rate: float, stop: asyncio.Event) -> None:
    """``rate`` requests a second, spread at random, each awaited in its own task."""
    rng = random.Random(7)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def one(ident: int) -> None:
            method, params = CALLS[ident % len(CALLS)]
            body = {"jsonrpc": "2.0", "method": method, "params": params, "id": ident}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(url, json=body) as answer:
                    await answer.read()

        await asyncio.sleep(1.0)  # the balancer's first probe round
        for ident in itertools.count(1):
            if stop.is_set():
                break
            task = asyncio.create_task(one(ident))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.expovariate(rate)):
                    await stop.wait()
        for task in list(tasks):
            task.cancel()


async def run_demo(host: str, port: int, rate: float, duration: float | None) -> None:
    with (
        FleetThread(FLEET) as fleet,
        tempfile.TemporaryDirectory(prefix="rpcbalancer-demo-") as tmp,
    ):
        config = from_mapping(
            {
                "nodes": [{"url": node.url, "name": name} for name, node in fleet.nodes.items()],
                "listen": {"host": host, "port": port},
                "store": f"sqlite:///{Path(tmp) / 'health.db'}",
                "probe": {"interval": "2s", "timeout": "1s"},
                "access_log": {"enabled": False},
                "explain": True,
            },
            env={},
            source="demo",
        )
        base = f"http://{host}:{port}"
        print(
            f"rpcbalancer demo: 4 simulated nodes ({', '.join(FLEET)}) and {rate:g} requests/s\n"
            f"  status page  {base}/status\n"
            f"  metrics      {base}/metrics\n"
            f"  terminal     rpcbalancer top --url {base}\n"
            f'  try it       curl -s -d \'{{"jsonrpc":"2.0","method":'
            f'"condenser_api.get_dynamic_global_properties","params":[],"id":1}}\' {base}\n'
            + ("Ctrl-C stops it." if duration is None else f"Stops after {duration:g} s."),
            flush=True,
        )
        stop = asyncio.Event()
        server = asyncio.create_task(serve_async(config, stop=stop))
        traffic = asyncio.create_task(_traffic(base, rate, stop))
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        try:
            await server
        finally:
            stop.set()
            await traffic
