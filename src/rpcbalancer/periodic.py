"""A background round that repeats: probes, DNS refresh, and the like."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval`` seconds while open (an async context manager).

    A round that raises is logged and the next one runs as planned: one bad round must not
    stop the background work for good.
    """

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except Exception:
                log.exception("%s: round failed", self.name)

    def start(self) -> Periodic:
        """Start the rounds (in the running loop); :meth:`__aexit__` stops them."""
        self._task = asyncio.create_task(self._run(), name=f"rpcbalancer-{self.name}")
        return self

    async def __aenter__(self) -> Periodic:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
