"""JSON-RPC 2.0, as far as routing needs it: sans-IO, pure functions.

A request body is parsed once, with orjson, into an :class:`RpcCall` that holds what the
router decides on (method names, ids, batch or not). The body itself is forwarded as the
client sent it; nothing is re-serialised on the way out. Answers from nodes are inspected
only when they might carry an error (a byte search before any parsing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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
UNAUTHORIZED = -32004
RATE_LIMITED = -32005

Id = str | int | float | None
_ID_TYPES = (str, int, float)
"""What an id may be besides null (as a tuple: a ``X | Y`` union is made anew at every call)."""


class RpcCall:
    """What routing needs to know of one JSON-RPC request or batch: the members that go to a
    node (``methods``, ``ids``) and, for a batch, the members answered here (``rejected``).
    (A plain class, not a dataclass: it is made for every request, and a dataclass's
    ``__init__`` stays interpreted when the module is compiled.)"""

    __slots__ = (
        "batch",
        "body",
        "first_id",
        "ids",
        "members",
        "methods",
        "notifications",
        "rejected",
        "silent",
    )

    def __init__(
        self,
        methods: tuple[str, ...],
        ids: tuple[Id, ...],
        batch: bool,
        notifications: int = 0,
        rejected: tuple[tuple[Id, int, str], ...] = (),
        body: bytes | None = None,
        members: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.methods = methods
        """Method names, one per forwarded member; ``call`` is unwrapped to ``api.method``."""
        self.ids = ids
        self.batch = batch
        self.notifications = notifications
        """Forwarded members without an ``id``: the spec gives them no answer."""
        self.rejected = rejected
        """Batch members answered here, not forwarded: ``(id, code, message)`` each."""
        self.body = body
        """What to forward when it is not the client's body (members were rejected)."""
        self.members = members
        """The forwarded members as parsed (their ``params`` route and key the cache)."""
        self.first_id: Id = ids[0] if ids else None
        """The first member's id (a single call's)."""
        self.silent = not rejected and notifications == len(methods) > 0
        """Only notifications: the client gets an empty answer (HTTP 204)."""

    def __repr__(self) -> str:
        return (
            f"RpcCall(methods={self.methods!r}, ids={self.ids!r}, batch={self.batch!r}, "
            f"notifications={self.notifications!r}, rejected={self.rejected!r}, "
            f"body={self.body!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RpcCall):
            return NotImplemented
        return (
            self.methods == other.methods
            and self.ids == other.ids
            and self.batch == other.batch
            and self.notifications == other.notifications
            and self.rejected == other.rejected
            and self.body == other.body
        )


@dataclass(frozen=True, slots=True)
class RpcProblem:
    """A request that must be answered without touching a node."""

    code: int
    message: str
    id: Id = None
    http_status: int = 400

    def body(self) -> bytes:
        return error_body(self.id, self.code, self.message)


MAX_BATCH = 100
MAX_DEPTH = 32
_LONG_NUMBER = re.compile(rb"[:,\[]\s*-?\d{20}")
"""A JSON number of 20 digits or more (or something in a string that looks like one, which
only costs the exact parse): beyond what orjson reads as an integer."""


def parse(
    body: bytes,
    *,
    max_batch: int = MAX_BATCH,
    max_depth: int = MAX_DEPTH,
    allowed: Callable[[str], bool] | None = None,
) -> RpcCall | RpcProblem:
    """Parse a request body as the JSON-RPC 2.0 spec says; never raises.

    The fast path is one orjson parse. Bodies that might hide an ambiguity take a slower,
    exact one: repeated ``method``/``id``/``params`` keys are refused (a node might read
    the other copy, and a broadcast must never pass for a read), and a body where orjson
    read a float is read again exactly (it reads an integer beyond 64 bits as a float: an
    id would not be echoed as sent, and parameters would be keyed and sent wrong).
    ``allowed`` (the endpoint's method rules) refuses a call, or a batch member, by method.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg or "recursion" in exc.msg:
            return RpcProblem(INVALID_REQUEST, f"Invalid Request: nested deeper than {max_depth}")
        return RpcProblem(PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc.msg})")
    members = 1 if isinstance(doc, dict) else len(doc) if isinstance(doc, list) else 1
    depth, inexact = _shape_of(doc)
    if depth > max_depth:
        return RpcProblem(INVALID_REQUEST, f"Invalid Request: nested deeper than {max_depth}")
    if (
        inexact
        or body.count(b'"method"') > members
        or body.count(b'"id"') > members
        or body.count(b'"params"') > members
    ):
        try:
            doc = json.loads(body, object_pairs_hook=_refuse_repeats)
        except _RepeatedKey as repeated:
            return RpcProblem(INVALID_REQUEST, f"Invalid Request: the key {repeated} appears twice")
        except (ValueError, RecursionError):
            return RpcProblem(PARSE_ERROR, "Parse error: the body is not valid JSON")
    if isinstance(doc, dict):
        member = _member(doc)
        if isinstance(member, str):
            return RpcProblem(INVALID_REQUEST, f"Invalid Request: {member}", _safe_id(doc))
        if allowed is not None and not allowed(member[0]):
            return RpcProblem(METHOD_NOT_FOUND, _not_here(member[0]), member[1], http_status=403)
        return RpcCall(
            methods=(member[0],),
            ids=(member[1],),
            batch=False,
            notifications=int(member[2]),
            members=(doc,),
        )
    if isinstance(doc, list):
        if not doc:
            return RpcProblem(INVALID_REQUEST, "Invalid Request: the batch is empty")
        if len(doc) > max_batch:
            return RpcProblem(
                INVALID_REQUEST,
                f"Invalid Request: a batch of {len(doc)} calls; at most {max_batch} per request",
            )
        methods: list[str] = []
        ids: list[Id] = []
        notifications = 0
        rejected: list[tuple[Id, int, str]] = []
        kept: list[Any] = []
        for index, item in enumerate(doc):
            member = _member(item) if isinstance(item, dict) else "not an object"
            if isinstance(member, str):
                ident = _safe_id(item) if isinstance(item, dict) else None
                rejected.append(
                    (ident, INVALID_REQUEST, f"Invalid Request: member {index}: {member}")
                )
                continue
            if allowed is not None and not allowed(member[0]):
                rejected.append((member[1], METHOD_NOT_FOUND, _not_here(member[0])))
                continue
            methods.append(member[0])
            ids.append(member[1])
            notifications += member[2]
            kept.append(item)
        forward = dumps(kept) if rejected and kept else None
        return RpcCall(
            methods=tuple(methods),
            ids=tuple(ids),
            batch=True,
            notifications=notifications,
            rejected=tuple(rejected),
            body=forward,
            members=tuple(kept),
        )
    return RpcProblem(INVALID_REQUEST, "Invalid Request: expected a JSON object or array")


def _not_here(method: str) -> str:
    return f"Method not allowed here: {method[:100]}"


class _RepeatedKey(ValueError):
    pass


_WATCHED = frozenset({"method", "id", "params", "jsonrpc"})


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen and key in _WATCHED:
            raise _RepeatedKey(repr(key))
        seen.add(key)
    return dict(pairs)


def _shape_of(doc: Any) -> tuple[int, bool]:
    """How deep arrays and objects nest in ``doc``, and whether orjson read a number in it as
    a float: a real fraction, or an integer beyond 64 bits that only the exact parse keeps
    (rare in requests either way). One walk, iterative (no recursion to exhaust)."""
    deepest = 0
    inexact = False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            if isinstance(value, float):
                inexact = True
            continue
        if level > deepest:
            deepest = level
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
            elif isinstance(child, float):
                inexact = True
    return deepest, inexact


def _safe_id(doc: dict[str, Any]) -> Id:
    value = doc.get("id")
    return value if isinstance(value, _ID_TYPES) and not isinstance(value, bool) else None


def _member(doc: dict[str, Any]) -> tuple[str, Id, bool] | str:
    """Return ``(method, id, is a notification)`` of a request object, or why it is invalid."""
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        return "'method' must be a non-empty string"
    if "jsonrpc" in doc and doc["jsonrpc"] != "2.0":
        return "'jsonrpc' must be \"2.0\""
    if "id" in doc:
        ident = doc["id"]
        if isinstance(ident, bool) or not (ident is None or isinstance(ident, _ID_TYPES)):
            return "'id' must be a string, a number or null"
    params = doc.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        return "'params' must be an array or an object"
    return called(method, params), _safe_id(doc), "id" not in doc


def called(method: str, params: Any) -> str:
    """The method a call names: ``call`` with ``[api, method, ...]`` is ``api.method``."""
    if method == "call" and isinstance(params, list) and len(params) >= 2:
        api, name = params[0], params[1]
        if isinstance(api, str) and isinstance(name, str):
            return f"{api}.{name}"
    return method


def loads(text: bytes | str) -> Any:
    """JSON text as Python values, exactly: orjson, or the standard library when a number
    may not fit 64 bits (orjson would read it as a float). Raises ``ValueError`` (orjson's
    ``JSONDecodeError`` is one) or ``RecursionError`` when the text is not JSON it can read."""
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_NUMBER.search(raw) is None:
        return orjson.loads(raw)
    return json.loads(raw)


def dumps(doc: Any) -> bytes:
    """orjson, or the standard library for integers beyond 64 bits (kept exact)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def result_answer(result: bytes, ident: Id) -> bytes:
    """A single answer made here of a ``result`` kept as JSON text and the client's id."""
    return b'{"jsonrpc":"2.0","result":' + result + b',"id":' + dumps(ident) + b"}"


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_body(ident: Id, code: int, message: str, data: Any = None) -> bytes:
    return dumps({"jsonrpc": "2.0", "error": error_object(code, message, data), "id": ident})


def error_body_for(call: RpcCall | None, code: int, message: str) -> bytes:
    """An error answer shaped like the request: one object, or one per batch member."""
    if call is not None and call.batch:
        error = error_object(code, message)
        answers = [{"jsonrpc": "2.0", "error": error, "id": i} for i in call.ids]
        answers += rejected_answers(call)
        return dumps(answers)
    return error_body(call.first_id if call else None, code, message)


def rejected_answers(call: RpcCall) -> list[dict[str, Any]]:
    """The error answers of the batch members answered here."""
    return [
        {"jsonrpc": "2.0", "error": error_object(code, message), "id": ident}
        for ident, code, message in call.rejected
    ]


def request_body(method: str, params: Any = None, ident: int = 1) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "method": method,
            "params": [] if params is None else params,
            "id": ident,
        }
    )


def number_after(body: bytes, key: bytes) -> int | None:
    """The integer that a key (``b'"head_block_number"'``, quotes included) holds in a JSON
    text, read from the bytes without parsing the rest (the first occurrence that holds one),
    or None."""
    size = len(body)
    found = body.find(key)
    while found >= 0:
        i = found + len(key)
        while i < size and body[i] in _SPACE:
            i += 1
        if i < size and body[i] == 58:  # ":"
            i += 1
            while i < size and body[i] in _SPACE:
                i += 1
            end = i
            while end < size and 48 <= body[end] <= 57:
                end += 1
            if end > i:
                return int(body[i:end])
        found = body.find(key, found + 1)
    return None


_SPACE = b" \t\r\n"


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


def null_answer(body: bytes) -> bool:
    """Whether a single answer says "not here": a ``null`` (or ``{}``) result, or steemd's
    error for a transaction it has not seen."""
    if len(body) > 512:
        return False
    if b"Unknown Transaction" in body:
        return True
    if b"null" not in body and b"{}" not in body and b"{ " not in body:
        return False  # (the usual answer: two searches, no copy)
    compact = body.replace(b" ", b"")
    return b'"result":null' in compact or b'"result":{}' in compact
