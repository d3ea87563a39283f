"""The line of requests waiting for a free slot under ``node_concurrency``.

When every usable node has ``node_concurrency`` tries in flight, a request waits in line
(at most ``queue_size`` of them; beyond, it is refused at once) until a try ends somewhere,
then picks again; it gives up at its deadline. First come, first served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable


class SlotLine:
    def __init__(self, cap: int, size: int, clock: Callable[[], float]) -> None:
        self.cap = cap
        """Tries in flight per node at most (0: no cap, no line)."""
        self.size = size
        self.clock = clock
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def __repr__(self) -> str:
        return f"<SlotLine cap={self.cap} waiting={len(self._waiters)}/{self.size}>"

    def full(self) -> bool:
        return len(self._waiters) >= self.size

    def join(self) -> asyncio.Future[None]:
        """A place in line (the next request to come sees it taken)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def wait(self, waiter: asyncio.Future[None], deadline: float) -> bool:
        """Wait in line until a try ends somewhere; False when the deadline comes first."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def freed(self) -> None:
        """A try ended: the first in line may go."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
