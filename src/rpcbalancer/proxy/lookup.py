"""The cache step: a read answered from the answer cache, in this process or in Redis.

A call whose plan has a TTL is looked up by its key (:attr:`.plan.Plan.key`): first in this
process (a dictionary, at once), then, when a Redis tier is configured and reachable, in
Redis (a round trip, so the request waits for it as a task). A hit is the cached ``result``
with the asking client's own id, byte for byte as the client wrote it. ``Cache-Control:
no-cache`` skips the look-up (``bypass``), never the keeping. What is kept is decided after
the answer (:mod:`.learn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cache import AnswerCache, Entry
from ..jsonrpc import Id, dumps

if TYPE_CHECKING:
    from .plan import Plan


class Lookup:
    def __init__(self, cache: AnswerCache | None, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.clock = clock

    def __repr__(self) -> str:
        return f"<Lookup {self.cache!r}>"

    def count(self, label: str, event: str) -> None:
        """An event of the cache for a method (its metric label): ``hit``, ``miss``,
        ``coalesced``, ``bypass``, ``stored``, ``skipped``."""
        if self.cache is not None:
            self.cache.count(label, event)

    def here(self, plan: Plan) -> Entry | None:
        """The entry for ``plan`` in this process, when it may be served now."""
        cache = self.cache
        if cache is None:
            return None
        return cache.get(plan.key, plan.shape.group.chain_now(self.clock()))

    def redis_usable(self) -> bool:
        """Whether a look-up in Redis is worth the round trip now."""
        cache = self.cache
        return cache is not None and cache.shared is not None and cache.shared.usable(self.clock())

    async def in_redis(self, plan: Plan) -> Entry | None:
        """The entry for ``plan`` in Redis (kept in this process too when found)."""
        cache = self.cache
        if cache is None:
            return None
        return await cache.get_shared(plan.key, plan.shape.group.chain_now(self.clock()))


def answer_of(entry: Entry, ident: Id) -> bytes:
    """A hit's answer: the cached result with the client's own id."""
    return b'{"jsonrpc":"2.0","result":' + entry.result + b',"id":' + dumps(ident) + b"}"
