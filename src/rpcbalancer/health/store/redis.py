"""Redis: the natural shared store for many balancer instances.

Keys (under a prefix, ``rpcbalancer`` unless the URL says ``?prefix=``): a hash of the
latest record per node (and one of its time, so that a write replaces it only with a newer
one, in one atomic script), a sorted set of history scored by time, and one key per lease
taken with ``SET NX PX`` and released only by its owner (a compare-and-delete script).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ...errors import ConfigError
from .base import ProbeRecord

# Atomic: a node's latest record is replaced only by a newer one; history gets everything.
_WRITE = """
for i = 1, #ARGV, 3 do
  local node, at, raw = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local current = redis.call('hget', KEYS[3], node)
  if not current or tonumber(current) <= at then
    redis.call('hset', KEYS[1], node, raw)
    redis.call('hset', KEYS[3], node, ARGV[i + 1])
  end
  redis.call('zadd', KEYS[2], at, raw)
end
return #ARGV / 3
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["rpcbalancer"])[0]
        self.connect_url = urlunsplit(parts._replace(query=""))
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix}>"

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def open(self) -> None:
        try:
            from redis import asyncio as aioredis  # an optional dependency: imported on use
        except ImportError:
            raise ConfigError(
                "store: redis:// needs the redis package: pip install 'rpcbalancer[redis]'"
            ) from None

        if self._client is None:
            self._client = aioredis.from_url(
                self.connect_url,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
                health_check_interval=15,
            )
        await self._client.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, records: Sequence[ProbeRecord]) -> None:
        args: list[bytes | str] = []
        for record in records:
            args += [record.node, repr(record.at), record.to_json()]
        keys = (self._key("latest"), self._key("history"), self._key("latest-at"))
        await self._client.eval(_WRITE, len(keys), *keys, *args)

    async def latest(self) -> dict[str, ProbeRecord]:
        raw = await self._client.hgetall(self._key("latest"))
        records = (ProbeRecord.from_json(value) for value in raw.values())
        return {r.node: r for r in records}

    async def history(self, since: float, node: str | None = None) -> list[ProbeRecord]:
        raw = await self._client.zrangebyscore(self._key("history"), since, "+inf")
        records = [ProbeRecord.from_json(value) for value in raw]
        return [r for r in records if node is None or r.node == node]

    async def prune(self, before: float) -> int:
        return int(await self._client.zremrangebyscore(self._key("history"), "-inf", f"({before}"))

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        key = self._key(f"lease:{name}")
        taken = await self._client.set(key, owner, nx=True, px=max(1, int(ttl * 1000)))
        if taken:
            return True
        return bool(await self._client.get(key) == owner.encode())

    async def release(self, name: str, owner: str) -> None:
        await self._client.eval(_RELEASE, 1, self._key(f"lease:{name}"), owner)
