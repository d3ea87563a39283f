"""The access log: one JSON line per client request, and request ids.

The gateway's accounting makes each line from the request's context (see
:func:`rpcbalancer.proxy.accounting.access_line` for what a line says); here they are kept and
written. Bodies are never logged unless ``access_log.bodies`` is set, and then truncated, with
every value that came from the environment (a secret header, a key in a URL) replaced by
``[redacted]`` (:meth:`AccessLog.body`); node headers are never logged at all.

Lines are gathered in memory and written together (every second, every 64 lines, at close,
and after each Lambda invocation), so logging costs a ``dumps`` and an ``append`` per
request, not a system call.
"""

from __future__ import annotations

import re
import secrets
import sys
from typing import IO, Any

import orjson

from ..config import AccessLogConfig

_VALID_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestIds:
    """Request ids: the client's ``X-Request-Id`` when it is a sane token, else ours (a random
    prefix per process and a counter: unique without a random draw per request)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(5) + "-"
        self.count = 0

    def get(self, offered: str | None) -> str:
        if offered and _VALID_ID.fullmatch(offered):
            return offered
        self.count += 1
        return self.prefix + str(self.count)  # (a format spec would cost more than the rest)


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
