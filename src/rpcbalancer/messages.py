"""What every layer passes around: an HTTP request and its response, and the one table from
each way a request can end badly to what the client gets.

Hosts (the standalone server, the ASGI app, Lambda) adapt their own request shapes to
:class:`HttpRequest` and write :class:`HttpResponse` back; the gateway answers on the
callback door through a :data:`Reply`. This module imports nothing of the package but the
error tree and JSON-RPC's error bodies, so every layer may depend on it.

:data:`FAILURES` is the table from a failure to its HTTP status, JSON-RPC error code and the
``outcome`` label of ``rpcbalancer_requests_total``; :func:`error_response` builds every
error a client gets, whichever host answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from . import jsonrpc
from .errors import NoHealthyNode, RpcBalancerError, UpstreamError, UpstreamTimeout


class HttpRequest:
    """One HTTP request, as every host hands it to the gateway. (Plain classes here, not
    dataclasses: they are made for every request, and a dataclass's ``__init__`` stays
    interpreted when the module is compiled.)"""

    __slots__ = ("body", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        peer: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers: Mapping[str, str] = {} if headers is None else headers
        """Lower-case names."""
        self.body = body
        self.peer = peer

    def __repr__(self) -> str:
        return (
            f"HttpRequest({self.method!r}, {self.path!r}, query={self.query!r}, "
            f"headers={dict(self.headers)!r}, body={self.body[:200]!r}, peer={self.peer!r})"
        )


class HttpResponse:
    """One HTTP response: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {self.headers!r}, {self.body[:200]!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HttpResponse):
            return NotImplemented
        return (self.status, self.headers, self.body) == (other.status, other.headers, other.body)


Reply = Callable[[HttpResponse], None]
"""How a host receives the answer on the gateway's callback door."""

JSON = ("content-type", "application/json")
CORS = (
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "x-rpc-node, x-rpc-attempts, x-rpc-node-version, x-rpc-hedged, x-rpc-upstream, "
        "x-rpc-scores, x-cache, x-request-id",
    ),
)

Outcome = Literal[
    "ok",
    "client_error",
    "denied",
    "rate_limited",
    "no_node",
    "busy",
    "timeout",
    "upstream_error",
    "internal",
]
"""How a request ended, as the ``outcome`` label counts it (a bounded set)."""


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    """The HTTP status."""
    code: int
    """The JSON-RPC error code."""
    outcome: Outcome


FAILURES: dict[str, Failure] = {
    # The request itself (no node is asked).
    "parse": Failure(400, jsonrpc.PARSE_ERROR, "client_error"),
    "invalid": Failure(400, jsonrpc.INVALID_REQUEST, "client_error"),
    "invalid_params": Failure(400, jsonrpc.INVALID_PARAMS, "client_error"),
    "unauthorized": Failure(401, jsonrpc.UNAUTHORIZED, "denied"),
    "forbidden": Failure(403, jsonrpc.METHOD_NOT_FOUND, "denied"),
    "not_found": Failure(404, jsonrpc.METHOD_NOT_FOUND, "client_error"),
    "not_allowed": Failure(405, jsonrpc.INVALID_REQUEST, "client_error"),
    "request_timeout": Failure(408, jsonrpc.INVALID_REQUEST, "client_error"),
    "too_large": Failure(413, jsonrpc.INVALID_REQUEST, "client_error"),
    "uri_too_long": Failure(414, jsonrpc.INVALID_REQUEST, "client_error"),
    "expectation": Failure(417, jsonrpc.INVALID_REQUEST, "client_error"),
    "rate_limited": Failure(429, jsonrpc.RATE_LIMITED, "rate_limited"),
    "headers_too_large": Failure(431, jsonrpc.INVALID_REQUEST, "client_error"),
    "http_version": Failure(505, jsonrpc.INVALID_REQUEST, "client_error"),
    # The balancer or the nodes.
    "internal": Failure(500, jsonrpc.INTERNAL_ERROR, "internal"),
    "upstream": Failure(502, jsonrpc.UPSTREAM_FAILED, "upstream_error"),
    "no_node": Failure(503, jsonrpc.NO_NODE, "no_node"),
    "busy": Failure(503, jsonrpc.RATE_LIMITED, "busy"),
    "timeout": Failure(504, jsonrpc.UPSTREAM_TIMEOUT, "timeout"),
}

_BY_STATUS = {f.status: f for f in reversed(FAILURES.values())}
"""A failure by HTTP status (the first of the table for a status two kinds share)."""


def failure_of(error: RpcBalancerError | None) -> str:
    """The table's kind for an error that ended a forwarded request."""
    if error is None or isinstance(error, NoHealthyNode):
        return "no_node"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        return "upstream"
    return "internal"


def outcome_of(status: int) -> Outcome:
    """The outcome label of an answer by its status (a node's own answer: ok below 400)."""
    if status < 400:
        return "ok"
    failure = _BY_STATUS.get(status)
    if failure is not None:
        return failure.outcome
    return "client_error" if status < 500 else "upstream_error"


def error_response(
    kind: str,
    message: str,
    call: jsonrpc.RpcCall | None = None,
    *,
    ident: jsonrpc.Id = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> HttpResponse:
    """The answer to a request that ends as ``kind``: its HTTP status, and a JSON-RPC error
    object with its code and ``message``, shaped like the request (one object, or one per
    batch member, ids echoed)."""
    failure = FAILURES[kind]
    if call is not None:
        body = jsonrpc.error_body_for(call, failure.code, message)
    else:
        body = jsonrpc.error_body(ident, failure.code, message)
    return HttpResponse(failure.status, [JSON, *CORS, *headers], body)


ALLOW = "GET, HEAD, POST, OPTIONS"
"""The methods the gateway answers (``Allow``)."""


def not_allowed(allow: str = ALLOW) -> HttpResponse:
    return error_response(
        "not_allowed", f"Method not allowed: use {allow}", headers=(("allow", allow),)
    )


def internal_error() -> HttpResponse:
    return error_response("internal", "Internal error in the balancer")
