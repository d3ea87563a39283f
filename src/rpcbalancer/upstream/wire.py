"""The bytes on the wire to a node: what crosses the transport seam (:class:`NodeRequest`,
:class:`UpstreamResponse`), where a node's requests go (:class:`Target`), and a request's
bytes (:func:`encode_request`), with what is the same for every request to a node encoded
once.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from ..fleet.address import NodeAddress


class UpstreamResponse:
    """A node's answer: its status, the headers a client may see, its body. (The classes
    made per request are plain classes: a dataclass's ``__init__`` stays interpreted when
    the module is compiled.)"""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"UpstreamResponse({self.status}, {self.headers!r}, {self.body[:200]!r})"

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return "application/json"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a node's requests go, parsed once per node URL."""

    key: tuple[str, str, int, str | None, bool]
    host: str
    port: int
    tls: ssl.SSLContext | None
    sni: str | None
    host_header: bytes
    path: str


_prefixes: dict[tuple[object, ...], tuple[bytes, frozenset[str]]] = {}
# Header lines repeat from request to request (content type, user agent): encoded once.
_lines: dict[tuple[str, str], bytes] = {}
_CACHE_SIZE = 4096


class NodeRequest:
    """What crosses the transport seam: one request for a node."""

    __slots__ = ("body", "headers", "idempotent", "method", "path")

    def __init__(
        self,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        idempotent: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        """The path (and query) in place of the node URL's own, or None for the node's URL."""
        self.headers = headers
        self.body = body
        self.idempotent = idempotent
        """False for a broadcast: it never takes a reused connection, so that a failure can
        always tell "never sent" from "may have arrived"."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.method} {self.path or '/'} "
            f"{len(self.body or b'')} bytes idempotent={self.idempotent}>"
        )


def encode_request(origin: NodeAddress, target: Target, request: NodeRequest) -> bytes:
    """The bytes of ``request`` for the node at ``origin``."""
    method, path, headers, body = request.method, request.path, request.headers, request.body
    # The request line, Host and the node's own headers are the same for every request to a
    # node: encoded once (keyed by its address itself, which the cache keeps alive: its id
    # could otherwise be reused by an address made later). The request's headers follow.
    key = (method, origin, path)
    cached = _prefixes.get(key)
    if cached is None:
        node_headers = origin.headers
        lines = [
            f"{method} {path or target.path} HTTP/1.1\r\n".encode("latin-1"),
            b"host: " + target.host_header + b"\r\n",
        ]
        lines += [
            f"{k}: {v}\r\n".encode("latin-1")
            for k, v in node_headers.items()
            if k.lower() not in _FRAMING
        ]
        own = frozenset(k.lower() for k in node_headers) | _FRAMING if node_headers else _FRAMING
        cached = (b"".join(lines), own)
        if len(_prefixes) >= _CACHE_SIZE:
            _prefixes.clear()
        _prefixes[key] = cached
    prefix, skip = cached
    parts = [prefix]
    if skip is _FRAMING:  # the node has no headers of its own (the usual case)
        lines_cache = _lines
        for pair in headers.items():
            line = lines_cache.get(pair)
            if line is None:
                if pair[0].lower() in _FRAMING:
                    continue
                line = f"{pair[0]}: {pair[1]}\r\n".encode("latin-1")
                if pair[0] in _CONSTANT and len(lines_cache) < _CACHE_SIZE:
                    lines_cache[pair] = line
            parts.append(line)
    else:
        for name, value in headers.items():
            if name.lower() not in skip:  # the node's own headers win
                parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if body is not None:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


# Request headers whose values come from a small set (worth keeping encoded); the others
# (request ids, client addresses) are new on every request.
_CONSTANT = frozenset({"content-type", "accept", "user-agent"})
_FRAMING = frozenset({"host", "content-length", "connection", "transfer-encoding"})
