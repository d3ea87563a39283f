"""The in-process tier: answers by key, bounded in bytes, least recently used out first."""

from __future__ import annotations

import collections

OVERHEAD = 300
"""Bytes an entry costs besides its key's and its answer's characters: the key's and the
answer's object headers, the entry and its expiry, the ordered dict's node (measured with
tracemalloc on CPython 3.11: about 260), and the slack its hash table keeps once entries come
and go (up to about 60 more). Counted, so that ``max_bytes`` bounds what the cache really
holds (``tests/unit/test_routes.py`` measures it)."""


class Entry:
    """One cached answer: the ``result`` as JSON text, and when and how it may be served.
    (Made per kept answer: a plain class, whose ``__init__`` compiles, where a dataclass's
    would not.)"""

    __slots__ = ("expires", "head", "node", "result")

    def __init__(self, result: bytes, node: str, expires: float, head: int | None = None) -> None:
        self.result = result
        self.node = node
        """The node that served it (its name): headers and ``__server__`` of a hit."""
        self.expires = expires
        """Wall time after which it is gone (``inf``: never)."""
        self.head = head
        """For a block that was not yet irreversible: the chain's head when it was cached;
        it is served only while the chain has not moved on (a fork cannot live past a
        block)."""

    def __repr__(self) -> str:
        return (
            f"Entry({len(self.result)} bytes from {self.node!r}, expires={self.expires}, "
            f"head={self.head})"
        )

    @property
    def size(self) -> int:
        """What it costs held (its key's characters aside); the node's name is shared."""
        return len(self.result) + OVERHEAD


class MemoryTier:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: collections.OrderedDict[str, Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<MemoryTier {len(self._items)} items, {self.bytes}/{self.max_bytes} bytes>"

    def get(self, key: str, now: float) -> Entry | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            self._drop(key, entry)
            return None
        self._items.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self.bytes -= old.size + len(key)
        items[key] = entry
        self.bytes += entry.size + len(key)
        while self.bytes > self.max_bytes and items:
            gone, evicted = items.popitem(last=False)
            self.bytes -= evicted.size + len(gone)
            self.evictions += 1

    def discard(self, key: str) -> None:
        entry = self._items.get(key)
        if entry is not None:
            self._drop(key, entry)

    def _drop(self, key: str, entry: Entry) -> None:
        del self._items[key]
        self.bytes -= entry.size + len(key)
