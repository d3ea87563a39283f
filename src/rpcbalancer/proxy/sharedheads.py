"""The head held across instances: the floors of every process that shares a Redis.

Several balancers behind one DNS name (or the workers of ``serve --workers N``) are one
endpoint to an app: a client whose next request lands on another process must not see the
head go back there either. So when the answer cache has a Redis (``cache.url``), each answer
that reports the head is settled with it before it goes out: one script call compares the
answer's head with the highest any process kept for the same call, keeps the higher, and
returns it. An answer behind it is replaced by it, as the floor of one process replaces it
(:mod:`.heads`), and the process's own floor moves up.

Because the highest head is written before the answer that reports it leaves, a client that
is told N by one process and then asks another reads N or more there. It costs one Redis
round trip on the calls that report the head, and nothing on the others. Redis is never
required: a call that fails or takes longer than :data:`TIMEOUT` marks it down (logged
once), the process holds its own floor alone, and tries Redis again after
:data:`RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..health.store import shown_url
from .heads import HeadFloor

log = logging.getLogger(__name__)

TIMEOUT = 0.25
"""Seconds the settling may take before the answer goes out on this process's floor."""
RETRY_AFTER = 5.0

_SETTLE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local head = tonumber(string.match(current, '^(%d+)'))
  if head and head >= tonumber(ARGV[2]) then
    return current
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ARGV[3]
"""
"""KEYS[1]: the group's hash; ARGV: the call's key, the head, ``head\\nnode\\nresult``, and
the seconds the hash lives after its last raise. Returns the highest kept."""


class SharedHeads:
    """The floors of one balancer's groups, settled through Redis."""

    __slots__ = ("_client", "_script", "down_since", "keep_for", "prefix", "url")

    def __init__(self, url: str, chain: str, hold_for: float) -> None:
        self.url = url
        self.prefix = f"rpcbalancer:heads:{chain}:"
        self.keep_for = max(60, int(hold_for * 4))
        """Seconds a group's hash lives after its last raise (a floor that old has been let
        go by every process long since)."""
        self.down_since: float | None = None
        self._client: Any = None
        self._script: Any = None

    def __repr__(self) -> str:
        state = "down" if self.down_since is not None else "up"
        return f"<SharedHeads {shown_url(self.url)} {state}>"

    def usable(self) -> bool:
        down = self.down_since
        return down is None or time.monotonic() - down >= RETRY_AFTER

    async def settle(self, group: str, key: str, floor: HeadFloor) -> None:
        """Settle the floor this process keeps for ``key`` with the other processes': the
        higher is kept in both."""
        held = floor.kept.get(key)
        if held is None:
            return
        value = b"%d\n%s\n%s" % (held.head, held.node.encode(), held.result)
        try:
            async with asyncio.timeout(TIMEOUT):
                got = await self._settle()(
                    keys=[self.prefix + group], args=[key, held.head, value, self.keep_for]
                )
        except Exception as exc:
            self._failed(exc)
            return
        if self.down_since is not None:
            log.info("head floor: Redis %s reachable again", shown_url(self.url))
            self.down_since = None
        if got != value:
            head, node, result = bytes(got).split(b"\n", 2)
            floor.adopt(key, int(head), result, node.decode())

    def _settle(self) -> Any:
        if self._script is None:
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(
                self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
            )
            self._script = self._client.register_script(_SETTLE)
        return self._script

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            log.warning(
                "head floor: Redis %s unreachable (%s: %s); each process holds its own",
                shown_url(self.url),
                type(exc).__name__,
                exc,
            )
        self.down_since = time.monotonic()
        client, self._client, self._script = self._client, None, None
        if client is not None:
            asyncio.get_running_loop().create_task(_close(client))

    async def aclose(self) -> None:
        client, self._client, self._script = self._client, None, None
        if client is not None:
            await _close(client)


async def _close(client: Any) -> None:
    try:
        await client.aclose()
    except Exception as exc:  # closing a broken connection may fail too
        log.debug("head floor: closing Redis: %s", exc)
