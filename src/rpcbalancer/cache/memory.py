"""The in-process tier: answers by key, bounded in bytes, least recently used out first."""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer: the ``result`` as JSON text, and when and how it may be served."""

    result: bytes
    node: str
    """The node that served it (its name): headers and ``__server__`` of a hit."""
    expires: float
    """Wall time after which it is gone (``inf``: never)."""
    head: int | None = None
    """For a block that was not yet irreversible: the chain's head when it was cached; it
    is served only while the chain has not moved on (a fork cannot live past a block)."""

    @property
    def size(self) -> int:
        return len(self.result) + len(self.node) + 96


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
            self.bytes -= old.size
        items[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes and items:
            _, evicted = items.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1

    def discard(self, key: str) -> None:
        entry = self._items.get(key)
        if entry is not None:
            self._drop(key, entry)

    def _drop(self, key: str, entry: Entry) -> None:
        del self._items[key]
        self.bytes -= entry.size
