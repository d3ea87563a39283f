"""The shared tier: answers in Redis, so that every instance (and Lambda container) shares
hits. Redis is never required: every call is bounded by a short timeout, a failure marks it
down (logged once) and the cache goes on in process alone, trying Redis again every few
seconds (logged once when it is back)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import sys
import time
from typing import Any

import orjson

from ..health.store import shown_url
from .memory import Entry

log = logging.getLogger(__name__)

TIMEOUT = 0.25
"""Seconds a Redis call may take before the request goes on without it."""
RETRY_AFTER = 5.0
FOREVER_S = 7 * 86400
"""How long Redis keeps an answer that never expires here (Redis memory is not ours)."""


class RedisTier:
    def __init__(self, url: str, prefix: str = "rpcbalancer:cache:") -> None:
        self.url = url
        self.prefix = prefix
        self.down_since: float | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        state = "down" if self.down_since is not None else "up"
        return f"<RedisTier {shown_url(self.url)} {state}>"

    def usable(self, now: float) -> bool:
        return self.down_since is None or now - self.down_since >= RETRY_AFTER

    def _key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()

    def _connect(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(
                self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
            )
        return self._client

    async def get(self, key: str) -> Entry | None:
        if not self.usable(time.monotonic()):
            return None
        try:
            async with asyncio.timeout(TIMEOUT):
                raw = await self._connect().get(self._key(key))
        except Exception as exc:
            self._failed(exc)
            return None
        self._ok()
        if raw is None:
            return None
        head_end = raw.find(b"\n")
        if head_end < 0:
            return None
        meta = orjson.loads(raw[:head_end])
        expires = float(meta.get("e", math.inf))
        node = sys.intern(str(meta.get("n", "")))  # one string per node, as in this process
        return Entry(raw[head_end + 1 :], node, expires, meta.get("h"))

    async def put(self, key: str, entry: Entry) -> None:
        if not self.usable(time.monotonic()):
            return
        meta: dict[str, Any] = {"n": entry.node, "h": entry.head}
        seconds = FOREVER_S
        if math.isfinite(entry.expires):
            meta["e"] = entry.expires
            seconds = max(1, math.ceil(entry.expires - time.time()))
        value = orjson.dumps(meta) + b"\n" + entry.result
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._connect().set(self._key(key), value, ex=seconds)
        except Exception as exc:
            self._failed(exc)
            return
        self._ok()

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            log.warning(
                "answer cache: Redis %s unreachable (%s: %s); caching in this process only",
                shown_url(self.url),
                type(exc).__name__,
                exc,
            )
        self.down_since = time.monotonic()
        client, self._client = self._client, None
        if client is not None:
            asyncio.get_running_loop().create_task(_close(client))

    def _ok(self) -> None:
        if self.down_since is not None:
            log.info("answer cache: Redis %s reachable again", shown_url(self.url))
        self.down_since = None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close(client)


async def _close(client: Any) -> None:
    try:
        await client.aclose()
    except Exception as exc:  # closing a broken connection may fail too
        log.debug("answer cache: closing Redis: %s", exc)
