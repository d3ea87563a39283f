"""The data plane's callback style, and its one bridge back to ``await``.

The proxy path runs on callbacks (see :mod:`.h1server`, :mod:`.gateway`, :mod:`.router`,
:mod:`.upstream`): an operation is started with a ``done`` callback and returns a handle
that can stop it. The hosts that await (ASGI, Lambda, the probes) use :func:`until_called`.
"""

from __future__ import annotations

import asyncio
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
