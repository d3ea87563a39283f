"""Small pieces of answering: the original reply shape's fields, a batch with the members
refused here put back, a forwarded path made safe, and the handles of requests that wait."""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath

import orjson

from .. import jsonrpc
from ..callbacks import Cancellable
from ..jsonrpc import RpcCall
from ..messages import HttpRequest, HttpResponse, Reply, internal_error

log = logging.getLogger(__name__)


class Staged:
    """The handle of a request that may wait for its node's version after the forwarding
    (``annotate: body``): cancels whichever stage is under way."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage: Cancellable | None = None

    def cancel(self) -> None:
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.cancel()


def reply_with(task: asyncio.Future[HttpResponse], req: HttpRequest, reply: Reply) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("unexpected error answering %s %s", req.method, req.path, exc_info=exc)
        reply(internal_error())
        return
    reply(task.result())


def with_rejected(body: bytes, call: RpcCall) -> bytes:
    """A node's batch answer with the answers of the members refused here added."""
    try:
        answers = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(answers, list):
        answers = [answers]
    return jsonrpc.dumps(answers + jsonrpc.rejected_answers(call))


def annotate(body: bytes, server: str, version: object) -> bytes:
    """The original design's reply: a JSON object gains ``__server__`` and ``__version__``.
    Anything else (a batch array, a non-JSON body) is returned as it is. The node's own
    bytes are kept (big integers stay exact): the two fields are added at the object's end,
    so they win over any copy the node sent itself."""
    text = body.strip()
    if text[:1] != b"{" or text[-1:] != b"}":
        return body
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # integers beyond 64 bits, which orjson refuses
            doc = json.loads(text)
        except (ValueError, RecursionError):
            return body
    if not isinstance(doc, dict):
        return body
    added = jsonrpc.dumps({"__server__": server, "__version__": version})[1:-1]
    inside = text[1:-1].strip()
    return b"{" + inside + (b"," if inside else b"") + added + b"}"


def safe_path(path: str) -> str | None:
    """A client path fit to append to a node URL: absolute, normalised, no way up."""
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    segments = path.split("/")
    if ".." in segments or "." in segments:
        return None
    normal = posixpath.normpath(path)
    return normal if normal.startswith("/") and not normal.startswith("//") else None
