"""Node URLs fit to show: no credentials, no query, no secret (sans-IO)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDACTED = "[redacted]"
MASK = "xrpcbalancerredactedx"
"""Stands for a value from the environment inside a URL while it is parsed (a host name may
hold it), then shown as ``[redacted]``."""
_KEYLIKE = re.compile(r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{24,}")


def display_url(url: str) -> str:
    """A URL fit to show: no credentials, no query string, and no secret in the path: a
    value that came from the environment, or any path segment that looks like an API key
    (24 or more letters and digits mixed), is shown as ``[redacted]``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    segments = [REDACTED if _KEYLIKE.fullmatch(seg) else seg for seg in parts.path.split("/")]
    path = "/".join(segments).rstrip("/")
    return f"{parts.scheme}://{netloc}{path}".replace(MASK, REDACTED)
