"""``rpcbalancer canary``: the canary alone, once or every interval, into the health store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from ..balancer import Balancer
from ..config import Config
from ..health.store import ProbeRecord

log = logging.getLogger(__name__)


async def run_canary(config: Config, *, interval: float | None, once: bool) -> list[ProbeRecord]:
    """The ``rpcbalancer canary`` command: one round (``once``) or rounds until stopped."""
    balancer = Balancer(config)
    canary = balancer.canary
    if interval is not None:
        canary.interval = interval
    store = balancer.store
    try:
        if store is not None:
            await store.open()
        if balancer.dns is not None:
            await balancer.dns.refresh()
        if once:
            return await canary.once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            started = loop.time()
            if await canary.tick():
                log.info("round %d: probed %d nodes", canary.rounds, len(balancer.fleet.nodes))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, canary.interval - (loop.time() - started))):
                    await stop.wait()
        return []
    finally:
        await balancer.transport.aclose()
        if store is not None:
            await store.close()
