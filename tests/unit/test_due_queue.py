"""The hedge timer queue: one loop timer for many requests, each called near its time."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from rpcbalancer.callbacks import Due, DueQueue


class Item:
    def __init__(self, calls: list[tuple[str, int, float]], name: str, token: int = 0) -> None:
        self.calls = calls
        self.name = name
        self.due_token = token

    def due(self, token: int) -> None:
        self.calls.append((self.name, token, asyncio.get_running_loop().time()))


def test_items_are_called_at_their_time_in_order_even_out_of_line() -> None:
    async def main() -> list[tuple[str, int, float]]:
        loop = asyncio.get_running_loop()
        calls: list[tuple[str, int, float]] = []
        queue = DueQueue()
        start = loop.time()

        def add(name: str, delay: float, token: int) -> None:
            item = Item(calls, name, token)
            queue.add(loop, start + delay, cast(Due, cast(Any, item)), token)

        add("a", 0.05, 1)
        add("b", 0.10, 2)
        add("early", 0.02, 3)  # before the last in line: a timer of its own
        add("c", 0.15, 4)
        gone = Item(calls, "ended", 9)  # its request ended: it holds no token any more
        queue.add(loop, start + 0.16, cast(Due, cast(Any, gone)), 5)
        await asyncio.sleep(0.3)
        return [(name, token, at - start) for name, token, at in calls]

    calls = asyncio.run(main())
    assert [(name, token) for name, token, _ in calls] == [
        ("early", 3),
        ("a", 1),
        ("b", 2),
        ("c", 4),
    ]
    for (_, _, at), due in zip(calls, (0.02, 0.05, 0.10, 0.15), strict=True):
        assert due - 0.002 <= at < due + 0.1  # never early; late only by scheduling


def test_an_idle_queue_holds_no_timer() -> None:
    async def main() -> DueQueue:
        loop = asyncio.get_running_loop()
        queue = DueQueue()
        queue.add(loop, loop.time() + 0.01, cast(Due, cast(Any, Item([], "x", 1))), 1)
        assert queue.timer is not None
        await asyncio.sleep(0.05)
        return queue

    queue = asyncio.run(main())
    assert queue.timer is None and not queue.items
