"""What the nodes' host names resolve to, for the pool's new connections.

A node named by a host name (``https://api.example.com``) needs its name resolved for every
new connection. Asking the system resolver each time puts DNS on the request's path: a
resolver that answers late delays the request by its timeout (5 s and more by default), one
that is down fails it, though the node itself is fine. :class:`Names` keeps each name's last
good answer:

- a name is resolved when a connection first needs it (callers at once share the lookup);
- once its answer is older than ``ttl`` (``dns_refresh``), it is looked up again in the
  background (:meth:`Names.refresh`, run every second, or the next connection that needs
  it), and connections go on with the answer they have meanwhile;
- a lookup that fails keeps the answer it has (logged once per outage) and is tried again
  after :data:`RETRY` seconds.

So a slow or failing resolver never delays a connection to a node already resolved; only a
name never resolved waits for it. With ``resolve_dns: true`` (:mod:`.dns`) the nodes are
addresses already and this is bypassed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]

RETRY = 5.0
"""Seconds after a failed lookup before the next (its name's last answer serves meanwhile)."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Answer:
    __slots__ = ("addresses", "due", "failing")

    def __init__(self, addresses: list[str], due: float) -> None:
        self.addresses = addresses
        self.due = due
        """When to look the name up again (loop time)."""
        self.failing = False
        """The last lookup failed (the addresses are older than ``ttl``)."""


class Names:
    """Each node host name's last good answer, refreshed in the background."""

    def __init__(self, ttl: float = 60.0, resolver: Resolver = system_resolver) -> None:
        self.ttl = ttl
        self.resolver = resolver
        self._answers: dict[tuple[str, int], _Answer] = {}
        self._lookups: dict[tuple[str, int], asyncio.Task[list[str]]] = {}

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host`` (raises :class:`socket.gaierror` only
        when the name has never been resolved and cannot be now)."""
        key = (host, port)
        answer = self._answers.get(key)
        if answer is not None:
            if key not in self._lookups and asyncio.get_running_loop().time() >= answer.due:
                self._look_up(key)  # in the background: this connection goes on
            return answer.addresses
        if is_literal(host):
            self._answers[key] = _Answer([host], float("inf"))
            return [host]
        task = self._lookups.get(key) or self._look_up(key)
        # (shielded: a connection that gives up waiting leaves the lookup to the others)
        return await asyncio.shield(task)

    async def refresh(self) -> None:
        """Look up again, in the background, every name whose answer is due (run now and
        then: the answers stay fresh, and a failing resolver shows on ``/status``, before a
        connection needs them)."""
        now = asyncio.get_running_loop().time()
        for key, answer in list(self._answers.items()):
            if now >= answer.due and key not in self._lookups:
                self._look_up(key)

    def close(self) -> None:
        for task in list(self._lookups.values()):
            task.cancel()

    def _look_up(self, key: tuple[str, int]) -> asyncio.Task[list[str]]:
        task = asyncio.get_running_loop().create_task(self._resolve(key))
        self._lookups[key] = task
        task.add_done_callback(functools.partial(self._finished, key))
        return task

    def _finished(self, key: tuple[str, int], task: asyncio.Task[list[str]]) -> None:
        if self._lookups.get(key) is task:
            del self._lookups[key]
        if not task.cancelled():
            task.exception()  # (retrieved: the callers that waited have it)

    async def _resolve(self, key: tuple[str, int]) -> list[str]:
        host, port = key
        loop = asyncio.get_running_loop()
        answer = self._answers.get(key)
        try:
            addresses = await self.resolver(host, port)
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "no address")
        except (OSError, UnicodeError) as exc:
            if answer is None:
                raise socket.gaierror(socket.EAI_FAIL, _why(exc)) from None
            if not answer.failing:
                log.warning(
                    "cannot resolve %s (%s); its connections use its last addresses %s",
                    host,
                    _why(exc),
                    ", ".join(answer.addresses),
                )
            answer.failing = True
            answer.due = loop.time() + min(RETRY, self.ttl)
            return answer.addresses
        if answer is not None and answer.failing:
            log.warning("%s resolves again: %s", host, ", ".join(addresses))
        self._answers[key] = _Answer(addresses, loop.time() + self.ttl)
        return addresses

    def view(self) -> dict[str, dict[str, Any]]:
        """Each name's addresses and whether its last lookup failed (for ``/status``)."""
        return {
            host: {"addresses": list(answer.addresses), "failing": answer.failing}
            for (host, _), answer in self._answers.items()
            if answer.due != float("inf")
        }


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)
