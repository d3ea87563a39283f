"""JSON-RPC 2.0, as far as routing needs it: sans-IO, pure functions.

A request body is parsed once, with orjson, into an :class:`RpcCall` that holds what the
router decides on (method names, ids, batch or not). The body itself is forwarded as the
client sent it; nothing is re-serialised on the way out. Answers from nodes are inspected
only when they might carry an error (a byte search before any parsing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (the -32000..-32099 range of the spec).
NO_NODE = -32001
UPSTREAM_TIMEOUT = -32002
UPSTREAM_FAILED = -32003

_Id = str | int | float | None


@dataclass(slots=True)  # built per request: frozen would cost a setattr call per field
class RpcCall:
    """What routing needs to know of one JSON-RPC request or batch."""

    methods: tuple[str, ...]
    """Method names, one per batch member; ``call`` is unwrapped to ``api.method``."""
    ids: tuple[_Id, ...]
    batch: bool

    @property
    def first_id(self) -> _Id:
        return self.ids[0] if self.ids else None


@dataclass(frozen=True, slots=True)
class RpcProblem:
    """A request that must be answered without touching a node."""

    code: int
    message: str
    id: _Id = None
    http_status: int = 400

    def body(self) -> bytes:
        return error_body(self.id, self.code, self.message)


def parse(body: bytes) -> RpcCall | RpcProblem:
    """Parse a request body; never raises."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return RpcProblem(PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc.msg})")
    if isinstance(doc, dict):
        member = _member(doc)
        if isinstance(member, str):
            return RpcProblem(INVALID_REQUEST, f"Invalid Request: {member}", _safe_id(doc))
        return RpcCall(methods=(member[0],), ids=(member[1],), batch=False)
    if isinstance(doc, list):
        if not doc:
            return RpcProblem(INVALID_REQUEST, "Invalid Request: the batch is empty")
        methods: list[str] = []
        ids: list[_Id] = []
        for index, item in enumerate(doc):
            if not isinstance(item, dict):
                return RpcProblem(
                    INVALID_REQUEST, f"Invalid Request: batch member {index} is not an object"
                )
            member = _member(item)
            if isinstance(member, str):
                return RpcProblem(
                    INVALID_REQUEST, f"Invalid Request: batch member {index}: {member}"
                )
            methods.append(member[0])
            ids.append(member[1])
        return RpcCall(methods=tuple(methods), ids=tuple(ids), batch=True)
    return RpcProblem(INVALID_REQUEST, "Invalid Request: expected a JSON object or array")


def _safe_id(doc: dict[str, Any]) -> _Id:
    value = doc.get("id")
    return value if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def _member(doc: dict[str, Any]) -> tuple[str, _Id] | str:
    """Return ``(method, id)`` of a request object, or why it is invalid."""
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        return "'method' must be a non-empty string"
    if "id" in doc:
        ident = doc["id"]
        if isinstance(ident, bool) or not isinstance(ident, str | int | float | None):
            return "'id' must be a string, a number or null"
    params = doc.get("params")
    if params is not None and not isinstance(params, list | dict):
        return "'params' must be an array or an object"
    if method == "call" and isinstance(params, list) and len(params) >= 2:
        api, name = params[0], params[1]
        if isinstance(api, str) and isinstance(name, str):
            method = f"{api}.{name}"
    return method, _safe_id(doc)


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_body(ident: _Id, code: int, message: str, data: Any = None) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "error": error_object(code, message, data), "id": ident})


def error_body_for(call: RpcCall | None, code: int, message: str) -> bytes:
    """An error answer shaped like the request: one object, or one per batch member."""
    if call is not None and call.batch:
        error = error_object(code, message)
        return orjson.dumps([{"jsonrpc": "2.0", "error": error, "id": i} for i in call.ids])
    return error_body(call.first_id if call else None, code, message)


def request_body(method: str, params: Any = None, ident: int = 1) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "method": method,
            "params": [] if params is None else params,
            "id": ident,
        }
    )


def looks_like_json(body: bytes) -> bool:
    """Whether a body opens like a JSON object or array (HTML error pages do not)."""
    head = body[:64].lstrip()
    return head[:1] in (b"{", b"[")


def response_errors(body: bytes) -> list[dict[str, Any]] | None:
    """The error objects in a JSON-RPC answer, ``[]`` when none, ``None`` when not JSON.

    Parses only when the bytes mention an error, so plain results cost one byte search.
    """
    if b'"error"' not in body:
        return [] if looks_like_json(body) else None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    members = doc if isinstance(doc, list) else [doc]
    errors = []
    for member in members:
        if isinstance(member, dict):
            error = member.get("error")
            if isinstance(error, dict):
                errors.append(error)
    return errors
