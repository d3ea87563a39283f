"""Health stores, selected by URL scheme. A new backend is one module and one line here."""

from __future__ import annotations

from urllib.parse import urlsplit

from ...errors import ConfigError
from .base import HealthStore, ProbeRecord


def shown_url(url: str) -> str:
    """A store URL fit for logs and answers: without the credentials before ``@``."""
    return url.rsplit("@", 1)[-1]


def open_store(url: str) -> HealthStore:
    """The store for ``url`` (not yet opened: call ``await store.open()``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if scheme == "dynamodb":
        from .dynamodb import DynamoStore

        return DynamoStore(url)
    raise ConfigError(
        f"store: unknown URL scheme {scheme!r} in {url!r} (sqlite:///file.db, "
        "redis://host:port/db, postgresql://..., dynamodb://table?region=...)"
    )


__all__ = ["HealthStore", "ProbeRecord", "open_store", "shown_url"]
