"""The original reply shape's ``__version__``: each node's version answer, asked once.

With ``annotate: body`` every JSON object answer carries ``__version__``, the whole answer of
the chain preset's version call (``condenser_api.get_version`` on Steem) on the node that
served it, as the original design returned it. The probes read it in the background. When a
node's version is not known yet (a fresh Lambda container racing without a store, a node no
probe has reached), the first request that needs it asks the node, once: every request that
needs it meanwhile waits on that one call, each within its own deadline. When asking fails,
``__version__`` is the failure's text, as the original design gave it, and the node is asked
again after :data:`RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from ..fleet.nodes import Node
from .chains import ProbeCall
from .probe import Prober, ask

RETRY_AFTER = 5.0
"""Seconds a failed version call is the answer before the node is asked again."""


class Versions:
    def __init__(self, prober: Prober, timeout: float) -> None:
        self.prober = prober
        self.clock = prober.clock
        self.timeout = timeout
        self.call: ProbeCall | None = next(
            (c for c in prober.chain.probe_calls() if c.name == "version"), None
        )
        self._docs: dict[str, Any] = {}
        """Version answers asked here, by node key (the probes' own are on the node)."""
        self._failed: dict[str, tuple[float, str]] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"<Versions known={len(self._docs)} failed={len(self._failed)}>"

    def known(self, node: Node, now: float) -> tuple[bool, Any]:
        """``(True, answer)`` when the node's ``__version__`` is at hand (the version
        answer, or the text of the last failure to get it), else ``(False, None)``."""
        probe = node.probe
        if probe is not None and probe.version_doc is not None:
            return True, probe.version_doc
        doc = self._docs.get(node.key)
        if doc is not None:
            return True, doc
        failed = self._failed.get(node.key)
        if failed is not None and now < failed[0]:
            return True, failed[1]
        if self.call is None:
            return True, None  # the chain has no version call
        return False, None

    def ask(self, node: Node, timeout: float, done: Callable[[Any], None]) -> Waiter:
        """Ask ``node`` its version (or join the call already asking); ``done(answer)`` is
        called within ``timeout`` seconds with the answer or a failure's text, unless the
        returned waiter is cancelled first."""
        task = self._asking.get(node.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(node))
            self._asking[node.key] = task
        return Waiter(self, node, task, timeout, done)

    async def _ask(self, node: Node) -> None:
        assert self.call is not None
        try:
            prober = self.prober
            answer = await ask(
                prober.transport, node, self.call, self.timeout, self.clock, prober.headers
            )
            doc: Any = None
            if answer.error is None and 200 <= answer.status < 300:
                try:
                    doc = orjson.loads(answer.body)
                except orjson.JSONDecodeError:
                    doc = None
            if isinstance(doc, dict) and "result" in doc and doc["result"] is not None:
                self._docs[node.key] = doc
                self._failed.pop(node.key, None)
                return
            if answer.error is not None:
                why = answer.error
            elif not 200 <= answer.status < 300:
                why = f"HTTP {answer.status}"
            elif isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                why = str(doc["error"].get("message") or "JSON-RPC error")
            else:
                why = "the answer is not JSON-RPC"
            self._fail(node, f"get_version failed: {why}")
        finally:
            self._asking.pop(node.key, None)

    def _fail(self, node: Node, text: str) -> None:
        self._failed[node.key] = (self.clock() + RETRY_AFTER, text)


class Waiter:
    """One request waiting for a node's version (see :meth:`Versions.ask`)."""

    __slots__ = ("done", "node", "task", "timer", "versions")

    def __init__(
        self,
        versions: Versions,
        node: Node,
        task: asyncio.Task[None],
        timeout: float,
        done: Callable[[Any], None],
    ) -> None:
        self.versions = versions
        self.node = node
        self.task = task
        self.done: Callable[[Any], None] | None = done
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(timeout, self._expired, timeout)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        versions = self.versions
        found, doc = versions.known(self.node, versions.clock())
        self._end(doc if found else "get_version failed: no answer")

    def _expired(self, timeout: float) -> None:
        self._end(f"get_version failed: no answer within {timeout:.3g}s")

    def _end(self, value: Any) -> None:
        done, self.done = self.done, None
        self.timer.cancel()
        self.task.remove_done_callback(self._answered)
        if done is not None:
            done(value)

    def cancel(self) -> None:
        self.done = None
        self.timer.cancel()
        self.task.remove_done_callback(self._answered)
