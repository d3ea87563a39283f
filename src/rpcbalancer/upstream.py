"""The node transport: the only module that talks to nodes.

One method, :meth:`Transport.send`: send a request to a node, get its status, headers and
body back, or an :class:`~rpcbalancer.errors.UpstreamError`. The router, the probes and the
race all go through it, so replacing the HTTP client underneath (a protocol-level pooled
client is planned) touches nothing else.

This implementation pools keep-alive connections with aiohttp. Redirects are never
followed (a node must not send a request elsewhere), compressed answers are decoded (the
body is then handed on as plain bytes), and every foreign exception is translated here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from .errors import UpstreamBadResponse, UpstreamConnectError, UpstreamError, UpstreamTimeout
from .nodes import Node

# Node answers are handed to clients with these headers only; the rest is the node's business.
_KEPT_HEADERS = ("content-type", "cache-control", "retry-after")
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return "application/json"


class Transport(Protocol):
    async def send(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> UpstreamResponse:
        """Send one request to ``node``; ``path`` (with query) replaces the node URL's path
        when given. Raises an :class:`UpstreamError` on any failure."""
        ...

    async def aclose(self) -> None: ...


def target_url(node: Node, path: str | None) -> str:
    if not path:
        return node.url
    return node.url.rstrip("/") + path


class AiohttpTransport:
    """Pooled keep-alive HTTP/1.1 client on aiohttp."""

    def __init__(self, connect_timeout: float = 2.0, pool_size: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily, inside the running loop that will use it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.pool_size, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def send(
        self,
        node: Node,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> UpstreamResponse:
        url = target_url(node, path)
        limits = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(self.connect_timeout, timeout)
        )
        merged = {**headers, **node.headers} if node.headers else headers
        if node.host_header is not None:
            merged = {**merged, "host": node.host_header}
        try:
            try:
                return await self._request(node, method, url, merged, body, limits)
            except aiohttp.ClientOSError as exc:
                if not _unwritten(exc):
                    raise
                # A pooled connection the node closed while it sat idle: nothing was
                # written, so the request goes once more, on a fresh connection.
                return await self._request(node, method, url, merged, body, limits)
        except UpstreamError:
            raise
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamConnectError(
                node.name, f"connect timed out after {self.connect_timeout:g}s"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(node.name, f"no answer within {timeout:.2f}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(node.name, _connect_failure(exc)) from None
        except aiohttp.ClientOSError as exc:
            if _unwritten(exc):
                raise UpstreamConnectError(node.name, "connection lost before sending") from None
            raise UpstreamError(node.name, f"connection error ({exc})") from None
        except aiohttp.ServerDisconnectedError:
            raise UpstreamError(node.name, "connection closed before the answer") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise UpstreamBadResponse(node.name, f"malformed answer ({exc})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise UpstreamError(node.name, f"{type(exc).__name__}: {exc}") from None

    async def _request(
        self,
        node: Node,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        limits: aiohttp.ClientTimeout,
    ) -> UpstreamResponse:
        async with self._client().request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=limits,
            allow_redirects=False,
            ssl=node.verify_tls,
            server_hostname=node.sni,
        ) as resp:
            if resp.content_length is not None and resp.content_length > MAX_BODY:
                raise UpstreamBadResponse(node.name, "answer too large", resp.status)
            data = await resp.read()
            kept = tuple(
                (name, resp.headers[name]) for name in _KEPT_HEADERS if name in resp.headers
            )
            return UpstreamResponse(resp.status, kept, data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    cause = exc.os_error
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve {exc.host} ({cause.strerror or cause})"
    code = getattr(cause, "errno", None)
    return f"cannot connect ({os.strerror(code).lower() if code else exc})"


def _unwritten(exc: aiohttp.ClientOSError) -> bool:
    """Whether aiohttp failed while writing the request, so the node cannot have it."""
    return "Can not write request body" in str(exc)
