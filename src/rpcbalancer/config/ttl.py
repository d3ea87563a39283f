"""TTLs as jussi and drone write them, read into seconds (sans-IO)."""

from __future__ import annotations

import math
from typing import Any

FOREVER = math.inf
"""A TTL: kept until evicted (jussi's ``0``, drone's ``NO_EXPIRE``)."""
NO_CACHE = -1.0
"""A TTL: never read from or written to the cache (jussi's ``-1``, drone's ``NO_CACHE``)."""
IF_IRREVERSIBLE = -2.0
"""A TTL: forever once the block is irreversible, else only until the chain moves on
(jussi's ``-2``, drone's ``EXPIRE_IF_REVERSIBLE``)."""


def parse_ttl(value: Any) -> float | None:
    """A TTL as configured: seconds (``0``: forever, as jussi's docs mean it), ``-1``,
    ``-2``, or drone's ``NO_CACHE``, ``NO_EXPIRE``, ``EXPIRE_IF_REVERSIBLE``."""
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().upper()
        named = {
            "NO_CACHE": NO_CACHE,
            "NO_EXPIRE": FOREVER,
            "EXPIRE_IF_REVERSIBLE": IF_IRREVERSIBLE,
            "DEFAULT_EXPIRE_IF_IRREVERSIBLE": IF_IRREVERSIBLE,
        }
        if word in named:
            return named[word]
        try:
            value = float(word)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a TTL: seconds, 0 (forever), -1 or NO_CACHE, "
                "-2 or EXPIRE_IF_REVERSIBLE, NO_EXPIRE"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a TTL")
    if value == 0:
        return FOREVER
    if value == -1:
        return NO_CACHE
    if value == -2:
        return IF_IRREVERSIBLE
    if value < 0:
        raise ValueError(f"{value!r} is not a TTL: negative values are -1 and -2 only")
    return float(value)
