"""The cache step: a read answered from the answer cache, in this process or in Redis.

A call whose plan has a TTL is looked up by its key (:attr:`.plan.Plan.key`): first in this
process (a dictionary, at once), then, when a Redis tier is configured and reachable, in
Redis (a round trip, so the request waits for it as a task). A hit is the cached ``result``
with the asking client's own id, byte for byte as the client wrote it. ``Cache-Control:
no-cache`` skips the look-up (``bypass``), never the keeping. The verdict goes into the
request's context (the accounting counts it, the answer shows it as ``X-Cache``); what is
kept is decided after the answer (:mod:`.learn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from ..cache import AnswerCache, Entry
from ..config.ttl import NO_CACHE
from ..jsonrpc import Id, result_answer
from .context import RequestContext
from .plan import Plan

# What a look-up found.
UNCACHED: Final = 0
"""Not a cache matter (no cache, or a call with no TTL): go on."""
HIT: Final = 1
"""Answered: the context holds the answer."""
MISS: Final = 2
"""Not here (or ``no-cache``): go on."""
ASK_REDIS: Final = 3
"""Not in this process; Redis may have it (:meth:`Lookup.in_redis`)."""


class Lookup:
    def __init__(self, cache: AnswerCache | None, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.clock = clock

    def __repr__(self) -> str:
        return f"<Lookup {self.cache!r}>"

    def find(self, ctx: RequestContext, plan: Plan) -> int:
        """Look ``plan``'s answer up in this process; the verdict goes into ``ctx``."""
        cache = self.cache
        if cache is None or plan.ttl == NO_CACHE:
            return UNCACHED
        if ctx.no_cache:
            ctx.verdict = "bypass"
            return MISS
        entry = cache.get(plan.key, plan.group.chain_now(ctx.start))
        if entry is not None:
            if ctx.wrote is None or entry.expires == math.inf:
                _hit(ctx, entry)
                return HIT
            ctx.verdict = "bypass"  # it may be older than the client's own broadcast
            return MISS
        ctx.verdict = "miss"
        if ctx.wrote is not None:
            return MISS  # (Redis's entries may be older than it too)
        shared = cache.shared
        return ASK_REDIS if shared is not None and shared.usable(self.clock()) else MISS

    def here(self, plan: Plan) -> Entry | None:
        """A batch member's entry in this process, when it may be served now."""
        cache = self.cache
        if cache is None:
            return None
        return cache.get(plan.key, plan.group.chain_now(self.clock()))

    def count(self, label: str, event: str) -> None:
        """A batch member's verdict (a single call's is counted by the accounting)."""
        if self.cache is not None:
            self.cache.count(label, event)

    async def in_redis(self, ctx: RequestContext, plan: Plan) -> bool:
        """Look ``plan``'s answer up in Redis (kept in this process too when found); True
        when ``ctx`` is answered."""
        cache = self.cache
        if cache is None:
            return False
        entry = await cache.get_shared(plan.key, plan.group.chain_now(self.clock()))
        if entry is None:
            return False
        _hit(ctx, entry)
        return True


def _hit(ctx: RequestContext, entry: Entry) -> None:
    ctx.verdict = "hit"
    ctx.body = answer_of(entry, ctx.call.first_id if ctx.call is not None else None)
    ctx.nodes = (entry.node,)


def answer_of(entry: Entry, ident: Id) -> bytes:
    """A hit's answer: the cached result with the client's own id."""
    return result_answer(entry.result, ident)
