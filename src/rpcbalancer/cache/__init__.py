"""The answer cache: repeated reads answered without asking a node.

Keys are the chain, the group, the method as routes read it (after ``call`` unwrapping and
``equivalent_methods``) and its parameters in one canonical spelling; never the request id:
a hit is the cached ``result`` with the asking client's own id. Two tiers: this process
(:class:`~.memory.MemoryTier`, bounded in bytes) and, with ``cache.url``, Redis
(:class:`~.shared.RedisTier`), which every instance shares and which is never required. What
is kept and for how long is :mod:`.policy`'s: the TTL of the route or the chain preset's,
forever for a block once irreversible (by the node that served it), until the chain moves on
for a block that is not yet.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..config.model import CacheConfig
from ..config.ttl import FOREVER, IF_IRREVERSIBLE, NO_CACHE
from ..jsonrpc import dumps, loads
from .memory import Entry, MemoryTier
from .policy import (
    BY_HASH,
    BY_NUMBER_FINAL,
    Finality,
    block_in_answer,
    block_link,
    block_of,
    block_transactions,
    default_ttl,
    empty,
    evm_block_of,
    quantity,
)
from .shared import RedisTier

__all__ = [
    "AnswerCache",
    "Entry",
    "Finality",
    "Keyed",
    "default_ttl",
    "has_result",
    "result_of",
]

EVENTS = ("hit", "miss", "coalesced", "bypass", "stored", "skipped")
LINKS = 10_000
HOLDS = 1_000
"""Blocks whose transaction ids are kept, for the transactions kept forever."""
"""Blocks whose ids the cache keeps to check the next block kept against (about 4 MB)."""


class Keyed(Protocol):
    """A call as the cache reads it (:class:`~rpcbalancer.proxy.plan.Plan`)."""

    @property
    def key(self) -> str: ...

    @property
    def parts(self) -> tuple[str, ...]:
        """The method as routes read it."""
        ...

    @property
    def params(self) -> Any: ...

    @property
    def ttl(self) -> float: ...


class AnswerCache:
    def __init__(
        self,
        config: CacheConfig,
        chain: str,
        block_interval: float,
        wall: Callable[[], float] = time.time,
        counts: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.config = config
        self.chain = chain
        self.block_interval = block_interval
        self.wall = wall
        self.memory = MemoryTier(config.max_bytes)
        self.shared = RedisTier(config.url) if config.url else None
        self.counts: dict[tuple[str, str], int] = {} if counts is None else counts
        """Events by (method label, event): the metrics read them (the process's
        :class:`~rpcbalancer.observe.counters.Stats` hands its own dict in)."""
        self._writes: set[asyncio.Task[None]] = set()
        """Writes to Redis under way (held: a task nobody holds may be collected)."""
        self.links: dict[int, tuple[str, str]] = {}
        """The id and ``previous`` of the blocks kept forever, by number (the latest
        :data:`LINKS`): a block kept next must link to its neighbours."""
        self.holds: dict[int, frozenset[str]] = {}
        """The transactions of the latest :data:`HOLDS` blocks kept forever, by number: a
        transaction kept forever must be in the block it names."""
        self.on_broken: Callable[[str, str], None] | None = None
        """Told of an answer that does not link to the blocks kept (the node's name, why):
        the balancer marks the node."""
        self.broken = 0
        """Answers refused for that."""

    def __repr__(self) -> str:
        return f"<AnswerCache {self.memory!r} shared={self.shared!r}>"

    def count(self, label: str, event: str) -> None:
        key = (label, event)
        self.counts[key] = self.counts.get(key, 0) + 1

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(EVENTS, 0)
        for (_, event), n in self.counts.items():
            out[event] += n
        return out

    def get(self, key: str, finality: Finality) -> Entry | None:
        """The in-process entry for ``key`` when it may be served now."""
        entry = self.memory.get(key, self.wall())
        if entry is not None and entry.head is not None and finality.head > entry.head:
            self.memory.discard(key)  # the chain moved on: a fork must not outlive it
            return None
        return entry

    async def get_shared(self, key: str, finality: Finality) -> Entry | None:
        if self.shared is None:
            return None
        entry = await self.shared.get(key)
        if entry is None or self.wall() >= entry.expires:
            return None
        if entry.head is not None and finality.head > entry.head:
            return None
        self.memory.put(key, entry)
        return entry

    def keep(
        self,
        call: Keyed,
        result: Any,
        node: str,
        node_irreversible: int | None,
        finality: Finality,
    ) -> Entry | None:
        """The entry to keep for an answer to ``call`` (``result``: its parsed ``result``,
        ``node``: the name of the node that served it, and the last irreversible block that
        node reported), or None when it must not be cached: empty, too large, or a block
        that is not the one asked for."""
        ttl = call.ttl
        if ttl == NO_CACHE or empty(result):
            return None
        parts, params = call.parts, call.params
        now = self.wall()
        head: int | None = None
        if ttl == IF_IRREVERSIBLE:
            asked = block_of(parts, params)
            if asked is None:
                return None
            held = block_in_answer(result)
            if held is not None and held != asked and parts[-1] != "get_block_range":
                return None  # a node that answers with another block: never keep it
            if node_irreversible is not None and asked <= node_irreversible:
                expires = math.inf
                if self._broken(node, self._unlinked(asked, result)):
                    return None
            else:
                expires = now + self.block_interval
                head = finality.head
        elif ttl == BY_HASH:
            if self._broken(node, self._misplaced(result)):
                return None
            expires = math.inf
        elif ttl == BY_NUMBER_FINAL:
            block = evm_block_of(parts[-1], params)
            if not isinstance(block, int) or block > finality.irreversible:
                return None
            if parts[-1] == "eth_getBlockByNumber" and self._broken(
                node, self._unlinked(block, result)
            ):
                return None
            expires = math.inf
        elif ttl == FOREVER:
            expires = math.inf
        elif ttl > 0:
            expires = now + ttl
        else:
            return None
        text = dumps(result)
        if len(text) > self.config.max_item_bytes:
            return None
        # orjson's bytes keep the whole buffer they were written into (4 KiB at least): a
        # copy of the exact size is what may live in the cache for hours.
        text = bytes(memoryview(text))
        return Entry(text, node, expires, head)

    def _broken(self, node: str, why: str | None) -> bool:
        """Whether an answer failed a check (``why``); then it is counted and its node
        marked."""
        if why is None:
            return False
        self.broken += 1
        if self.on_broken is not None:
            self.on_broken(node, why)
        return True

    def _misplaced(self, result: Any) -> str | None:
        """Why a transaction (an EVM receipt, a transaction by hash) cannot be kept forever:
        the block it names is not the block of that number kept, or that block does not hold
        it. None when it fits (or nothing is known of its block)."""
        if not isinstance(result, dict):
            return None
        number = quantity(result.get("blockNumber"))
        if number is None:
            return None
        tx = result.get("transactionHash", result.get("hash"))
        link = self.links.get(number)
        named = result.get("blockHash")
        if link is not None and isinstance(named, str) and named != link[0]:
            return f"transaction {tx} names block {number} {named}; the block kept is {link[0]}"
        held = self.holds.get(number)
        if held is not None and isinstance(tx, str) and tx not in held:
            return f"transaction {tx} is not in block {number} as kept"
        return None

    def _unlinked(self, number: int, result: Any) -> str | None:
        """Why block ``number``'s answer cannot be kept forever: its ``previous`` is not the
        id of the block before it, or its id not the ``previous`` of the block after it, as
        kept. None when it links (or nothing is known to link it to); then it is known."""
        link = block_link(result)
        if link is None:
            return None
        own, previous = link
        links = self.links
        before = links.get(number - 1)
        if before is not None and before[0] != previous:
            return f"block {number}'s previous is {previous}, the block kept before it {before[0]}"
        after = links.get(number + 1)
        if after is not None and after[1] != own:
            return f"block {number} is {own}, the block kept after it follows {after[1]}"
        if len(links) >= LINKS:
            del links[next(iter(links))]
        links[number] = link
        held = block_transactions(result)
        if held is not None:
            holds = self.holds
            if len(holds) >= HOLDS:
                del holds[next(iter(holds))]
            holds[number] = held
        return None

    def offer(
        self,
        call: Keyed,
        result: Any,
        node: str,
        node_irreversible: int | None,
        finality: Finality,
        label: str,
    ) -> bool:
        """Keep an answer to ``call`` when it may be kept (see :meth:`keep`), here at once and
        in Redis in the background; counted as ``stored`` or ``skipped`` under ``label``.
        Whether it was kept."""
        entry = self.keep(call, result, node, node_irreversible, finality)
        if entry is None:
            self.count(label, "skipped")
            return False
        key = call.key
        self.memory.put(key, entry)
        self.count(label, "stored")
        if self.shared is not None:
            task = asyncio.get_running_loop().create_task(self.shared.put(key, entry))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return True

    def offer_body(
        self,
        call: Keyed,
        body: bytes,
        node: str,
        node_irreversible: int | None,
        finality: Finality,
        label: str,
    ) -> bool:
        """:meth:`offer` for a single answer's bytes (kept only when it has a ``result``)."""
        result = result_of(body)
        if result is _MISSING:
            return False
        return self.offer(call, result, node, node_irreversible, finality, label)

    def put(self, key: str, entry: Entry) -> None:
        self.memory.put(key, entry)

    async def put_shared(self, key: str, entry: Entry) -> None:
        if self.shared is not None:
            await self.shared.put(key, entry)

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()


_MISSING = object()


def result_of(body: bytes) -> Any:
    """The ``result`` of a single JSON-RPC answer, or a sentinel when it has none (an error,
    not JSON); integers beyond 64 bits stay exact."""
    try:
        doc = loads(body)
    except (ValueError, RecursionError):
        return _MISSING
    if not isinstance(doc, dict) or "error" in doc or "result" not in doc:
        return _MISSING
    return doc["result"]


def has_result(value: Any) -> bool:
    return value is not _MISSING
