"""A fleet of fake nodes running on their own event loop in a background thread.

Tests and demos use it to stand a fleet beside a balancer that runs in another process
(or loop): ``with FleetThread({"fast": Behaviour(), ...}) as fleet: fleet["fast"].url``.
Control calls (:meth:`kill`, :meth:`revive`, :meth:`set`) are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from .mempool import Mempool
from .node import Behaviour, FakeNode

T = TypeVar("T")


class FleetThread:
    def __init__(
        self,
        behaviours: Mapping[str, Behaviour],
        *,
        chain: str = "steem",
        seed: int = 1,
        chains: Mapping[str, str] | None = None,
    ) -> None:
        """``chains`` gives some nodes a kind of their own (``hivemind``)."""
        kinds = chains or {}
        self.mempool = Mempool()
        """The transactions the fleet's nodes took, shared: a chain's mempool."""
        self.nodes = {
            name: FakeNode(
                name, b, chain=kinds.get(name, chain), seed=seed + i, mempool=self.mempool
            )
            for i, (name, b) in enumerate(behaviours.items())
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-fleet", daemon=True
        )

    def __getitem__(self, name: str) -> FakeNode:
        return self.nodes[name]

    def __repr__(self) -> str:
        return f"<FleetThread {list(self.nodes.values())!r}>"

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def kill(self, name: str) -> None:
        self.run(self.nodes[name].stop())

    def revive(self, name: str) -> None:
        self.run(self.nodes[name].revive())

    def set(self, name: str, **changes: Any) -> None:
        node = self.nodes[name]
        self._loop.call_soon_threadsafe(lambda: node.set(**changes))

    def __enter__(self) -> FleetThread:
        self._thread.start()
        try:
            for node in self.nodes.values():
                self.run(node.start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            for node in self.nodes.values():
                with contextlib.suppress(Exception):  # best effort at teardown
                    self.run(node.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
