"""The data plane's callback style, and its one bridge back to ``await``.

The proxy path runs on callbacks (see :mod:`.proxy.server`, :mod:`.proxy.gateway`,
:mod:`.proxy.forwarding`,
:mod:`.upstream`): an operation is started with a ``done`` callback and returns a handle
that can stop it. The hosts that await (ASGI, Lambda, the probes) use :func:`until_called`.
Timers are shared rather than made per request: :class:`DueQueue`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Cancellable(Protocol):
    """A started operation; ``cancel`` stops it, and its ``done`` is then never called."""

    def cancel(self) -> object: ...


async def until_called(start: Callable[[Callable[[T], None]], Cancellable | None]) -> T:
    """Await what ``start(done)`` passes to ``done``. ``done`` may be called before
    ``start`` returns. Cancelling the awaiting task cancels the started operation."""
    waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    def done(value: T) -> None:
        if not waiter.done():
            waiter.set_result(value)

    handle = start(done)
    try:
        return await waiter
    except asyncio.CancelledError:
        if handle is not None:
            handle.cancel()
        raise


def running_loop(cached: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """The running loop: ``cached`` while it runs. ``asyncio.get_running_loop`` costs a
    ``getpid`` system call on Python 3.11, too dear for every request."""
    if cached is not None and cached.is_running():
        return cached
    return asyncio.get_running_loop()


class Due(Protocol):
    due_token: int
    """The token under which the item waits in a :class:`DueQueue`; 0 when it waits for
    nothing any more."""

    def due(self, token: int) -> None: ...


class DueQueue:
    """Calls ``item.due(token)`` at (about) its time, with one loop timer for all items,
    unless the item no longer holds that token.

    Made for hedges, which are due a node's p95 latency after their request started: the
    same delay, give or take, for every request of a while, so items arrive in due order
    and wait in a FIFO behind a single timer, instead of a timer each (a timer costs more
    than the rest of the hedge bookkeeping). Items are not removed when their request
    ends: the queue skips an entry whose token the item no longer holds. An item due
    before the last one in line (the delay just shrank) gets a timer of its own.
    """

    def __init__(self) -> None:
        self.items: collections.deque[tuple[float, Due, int]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, when: float, item: Due, token: int) -> None:
        items = self.items
        if items and when < items[-1][0]:
            loop.call_at(when, item.due, token)
            return
        items.append((when, item, token))
        if self.timer is None:
            self.timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        items = self.items
        now = loop.time()
        while items:
            when, item, token = items[0]
            if when > now:
                self.timer = loop.call_at(when, self._fire, loop)
                return
            items.popleft()
            if item.due_token == token:  # most have ended: no call
                item.due(token)
