"""Rate limits: a token bucket per client, in this process or shared through Redis.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; a request
takes one token per JSON-RPC call in it. A client is its address (after the trusted-proxy
rule) or its API key. In memory, the buckets of the clients seen least recently are
forgotten beyond ``max_clients`` (a forgotten client comes back with a full bucket), so
memory stays bounded whatever addresses arrive.

With a Redis store and ``shared: true``, one Lua script takes tokens atomically in Redis,
so every balancer sharing it enforces one limit. If Redis cannot be reached the limiter
falls back to its own buckets (logged once each way): a store outage never turns into
refusing, or into not limiting at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..config import RateLimit

log = logging.getLogger(__name__)

_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class LocalLimiter:
    """Token buckets in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, limit: RateLimit, cost: int = 1) -> float:
        """Take ``cost`` tokens; 0.0 when allowed, else the seconds until they would be there."""
        now = self.clock()
        buckets = self._buckets
        state = buckets.pop(client, None)
        if state is None:
            tokens = float(limit.burst)
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)  # the client seen least recently
        else:
            tokens = min(float(limit.burst), state[0] + (now - state[1]) * limit.rate)
        if tokens >= cost:
            buckets[client] = (tokens - cost, now)
            return 0.0
        buckets[client] = (tokens, now)
        return (cost - tokens) / limit.rate

    def __len__(self) -> int:
        return len(self._buckets)


class RedisLimiter:
    """Token buckets in Redis, shared by every balancer using it."""

    def __init__(self, url: str, prefix: str, fallback: LocalLimiter) -> None:
        self.url = url
        self.prefix = prefix
        self.fallback = fallback
        self._client: Any = None
        self._script: Any = None
        self._down = False

    async def take(self, client: str, limit: RateLimit, cost: int = 1) -> float:
        try:
            if self._client is None:
                import redis.asyncio as aioredis

                self._client = aioredis.from_url(self.url, socket_timeout=0.5)
                self._script = self._client.register_script(_TAKE)
            wait = await self._script(
                keys=[f"{self.prefix}rl:{client}"],
                args=[limit.rate, limit.burst, cost, time.time()],
            )
        except Exception as exc:
            if not self._down:
                self._down = True
                log.warning("rate limits: Redis unreachable (%s); limiting per process", exc)
            return self.fallback.take(client, limit, cost)
        if self._down:
            self._down = False
            log.info("rate limits: Redis reachable again; limits are shared")
        return float(wait)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def retry_after(wait: float) -> str:
    """The ``Retry-After`` header value: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
