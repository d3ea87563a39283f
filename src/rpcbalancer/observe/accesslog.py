"""The access log: one JSON line per client request, and request ids.

A line says who asked (request id, client address), what (the JSON-RPC method, or the count
and first methods of a batch), who answered (node, attempts, hedged), how it ended (HTTP
status, outcome, error), how long it took and how many bytes went each way. Bodies are
never logged unless ``access_log.bodies`` is set, and then truncated, with every value that
came from the environment (a secret header, a key in a URL) replaced by ``[redacted]``;
node headers are never logged at all.

Lines are gathered in memory and written together (every second, every 64 lines, at close,
and after each Lambda invocation), so logging costs a ``dumps`` and an ``append`` per
request, not a system call.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..config import AccessLogConfig

if TYPE_CHECKING:
    from ..jsonrpc import RpcCall
    from ..messages import HttpRequest, HttpResponse

_VALID_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
BATCH_METHODS_SHOWN = 5


class RequestIds:
    """Request ids: the client's ``X-Request-Id`` when it is a sane token, else ours (a random
    prefix per process and a counter: unique without a random draw per request)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(5)
        self.count = 0

    def get(self, offered: str | None) -> str:
        if offered and _VALID_ID.fullmatch(offered):
            return offered
        self.count += 1
        return f"{self.prefix}-{self.count:x}"


class AccessLog:
    def __init__(self, config: AccessLogConfig, secrets_: frozenset[str]) -> None:
        self.config = config
        self.secrets = tuple(s for s in secrets_ if len(s) >= 4)
        self._lines: list[bytes] = []
        self._stream: IO[bytes] | None = None
        self._owned = False

    def open(self) -> None:
        if self._stream is not None:
            return
        if self.config.path == "-":
            self._stream = sys.stdout.buffer
        else:
            self._stream = open(self.config.path, "ab")  # noqa: SIM115 - closed in close()
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(record))
        if len(self._lines) >= 64:
            self.flush()

    def body(self, raw: bytes) -> str:
        text = raw[: self.config.body_max].decode("utf-8", "replace")
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def flush(self) -> None:
        if not self._lines:
            return
        if self._stream is None:
            self.open()
        assert self._stream is not None
        lines, self._lines = self._lines, []
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log never fails a request

    async def tick(self) -> None:
        self.flush()

    def close(self) -> None:
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None
        self._owned = False


def access_line(
    req: HttpRequest,
    call: RpcCall | None,
    response: HttpResponse,
    seconds: float,
    rid: str,
    ip: str,
    kind: str,
    log: AccessLog,
    secret_path: bool,
    served: dict[str, Any] | None,
) -> dict[str, Any]:
    """The access line of one request (``secret_path``: its path is an API key; ``served``:
    the node, attempts, hedged and error of a forwarded one; the cache's verdict and the
    group from the response's headers)."""
    line: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "id": rid,
        "ip": ip,
        "http": req.method,
        "status": response.status,
        "outcome": kind,
        "ms": round(seconds * 1000, 2),
        "in": len(req.body),
        "out": len(response.body),
    }
    if req.path != "/":
        line["path"] = "/[api key]" if secret_path else req.path[:200]
    if call is not None:
        if call.batch:
            line["batch"] = len(call.methods)
            line["methods"] = [m[:100] for m in call.methods[:BATCH_METHODS_SHOWN]]
        else:
            line["method"] = call.methods[0][:100] if call.methods else ""
    if served is not None:
        line["node"] = served["node"]
        line["attempts"] = served["attempts"]
        if served["hedged"]:
            line["hedged"] = True
        if served["error"] is not None:
            line["error"] = served["error"]
    elif kind != "ok":
        line["error"] = _message_of(response.body)
    for name, value in response.headers:
        if name == "x-cache":
            line["cache"] = value  # hit, miss, coalesced, bypass
        elif name == "x-rpc-upstream":
            line["upstream"] = value
    if log.config.bodies and req.body:
        line["body"] = log.body(req.body)
    return line


def _message_of(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    return str(error.get("message"))[:300] if isinstance(error, dict) else None
