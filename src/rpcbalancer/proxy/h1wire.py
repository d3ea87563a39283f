"""HTTP/1.1 on the wire, for the data plane's server (:mod:`.server`): an answer's bytes, and
a request's framing read without the parser (enough to refuse a request unread).

Answers repeat (the status line, the JSON and CORS headers, the node names): each piece is
encoded once and kept. The refusal a worker writes while it sheds is kept whole, encoded
again only when its ``Date`` changes.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus

from ..messages import CORS, JSON, HttpResponse

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Response header lines repeat (content type, CORS, the node names): encode each once.
HEADER_CACHE_SIZE = 4096
_header_lines: dict[tuple[str, str], bytes] = {}
_status_lines: dict[int, bytes] = {}
_BASE = (JSON, *CORS)
_BASE_LINES = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in _BASE)
"""The headers every JSON answer starts with (``JSON`` and ``CORS``), encoded once."""
_date_cache: tuple[int, bytes] = (0, b"")


def _starts_as_usual(headers: list[tuple[str, str]]) -> bool:
    """Whether the headers open with ``JSON`` and ``CORS`` themselves (not copies)."""
    return (
        len(headers) >= 3
        and headers[0] is _BASE[0]
        and headers[1] is _BASE[1]
        and headers[2] is _BASE[2]
    )


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def encode(response: HttpResponse, head: bool, keep_alive: bool) -> bytes:
    """An answer as it goes on the wire (HTTP/1.1; without its body for ``HEAD``)."""
    status = response.status
    start = _status_lines.get(status)
    if start is None:
        start = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        _status_lines[status] = start
    parts = [start]
    headers = response.headers
    first = 0
    if _starts_as_usual(headers):  # the usual start, encoded once
        parts.append(_BASE_LINES)
        first = 3
    lines = _header_lines
    for pair in headers[first:] if first else headers:
        line = lines.get(pair)
        if line is None:
            line = f"{pair[0]}: {pair[1]}\r\n".encode("latin-1")
            if len(lines) < HEADER_CACHE_SIZE:
                lines[pair] = line
        parts.append(line)
    parts.append(b"content-length: %d\r\ndate: %s\r\n" % (len(response.body), _date()))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(response.body)
    return b"".join(parts)


_STEERING = (b"\r\ntransfer-encoding:", b"\r\nexpect:", b"\r\nupgrade:")
"""Request headers that change how a request is framed or the connection goes on: a request
with one is parsed, not refused unread (:func:`whole_post`); so is one with
``Connection`` other than ``keep-alive``."""


def _value(head: bytes, start: int) -> bytes:
    """The value of the header line whose value starts at ``start`` in ``head``."""
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


_refusal: tuple[HttpResponse | None, bytes, bytes] = (None, b"", b"")
"""The refusal last written unread: the answer, the date it was encoded at, its bytes."""


def refusal_bytes(refusal: HttpResponse) -> bytes:
    """The guard's refusal on the wire, kept alive: encoded once a second (its date)."""
    global _refusal
    answer, date, wire = _refusal
    now = _date()
    if answer is not refusal or date is not now:
        wire = encode(refusal, False, True)
        _refusal = (refusal, now, wire)
    return wire


def whole_post(data: bytes, max_header_bytes: int) -> bool:
    """Whether ``data`` is exactly one whole request, framed as a client sends one in one
    write: ``POST``, HTTP/1.1 kept alive, one ``Content-Length`` that the body after the
    headers has, none of the headers that change the framing or the connection. Only
    the framing is read (a refusal needs no more); anything else is the parser's."""
    if data[:5] != b"POST ":
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > max_header_bytes:
        return False
    head = data[:end].lower()
    length_at = head.find(b"\r\ncontent-length:")
    if (
        length_at < 0
        or head.find(b"\r\ncontent-length:", length_at + 1) >= 0
        or not head[: head.find(b"\r\n")].endswith(b" http/1.1")
    ):
        return False
    for name in _STEERING:
        if head.find(name) >= 0:
            return False
    if _value(head, length_at + 17) != b"%d" % (len(data) - end - 4):
        return False
    connection = head.find(b"\r\nconnection:")
    return connection < 0 or (
        _value(head, connection + 13) == b"keep-alive"
        and head.find(b"\r\nconnection:", connection + 1) < 0
    )
