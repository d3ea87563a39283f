"""The gateway: HTTP request in, HTTP response out, the same for every host.

It holds the routes (the proxy at ``/``, ``/health``, ``/version``, ``/status.json``), CORS,
and the one place where errors become responses: JSON-RPC error objects with the request's
id echoed, and an HTTP status by cause (400 bad request, 502 bad upstream, 503 no node,
504 deadline). Hosts adapt their own request shapes to :class:`HttpRequest`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import __version__, jsonrpc
from .balancer import Balancer
from .clientip import client_ip
from .errors import NoHealthyNode, RpcBalancerError, UpstreamError, UpstreamTimeout
from .jsonrpc import RpcCall, RpcProblem
from .router import Outcome, ProxyRequest
from .views import health_doc, status_doc

ALLOW = "GET, HEAD, POST, OPTIONS"
_CORS = (
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "x-rpc-node, x-rpc-attempts, x-rpc-node-version, x-rpc-hedged",
    ),
)
_JSON = ("content-type", "application/json")


@dataclass(slots=True)  # built per request: frozen would cost a setattr call per field
class HttpRequest:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-case names."""
    body: bytes = b""
    peer: str = ""


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


def _json(status: int, doc: Any, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, [_JSON, *_CORS, *extra], orjson.dumps(doc))


def _error(status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, [_JSON, *_CORS, *extra], body)


class Gateway:
    def __init__(self, balancer: Balancer, *, annotate: str | None = None) -> None:
        self.balancer = balancer
        self.config = balancer.config
        self.annotate = annotate or self.config.annotate
        """``body``: the original design's ``__server__``/``__version__`` in JSON answers."""
        self._control = {
            "/health": self._health,
            "/version": self._version,
            "/status.json": self._status,
        }

    def handle(self, req: HttpRequest) -> Awaitable[HttpResponse]:
        """Answer one request. A plain function returning the awaitable, so that the proxy
        route costs no extra coroutine frame on every suspension."""
        if req.path == "/" and req.method != "OPTIONS":
            return self._proxy(req, None)
        return self._other(req)

    async def _other(self, req: HttpRequest) -> HttpResponse:
        method = req.method.upper()
        if method == "OPTIONS":
            return self._preflight(req)
        control = self._control.get(req.path)
        if control is not None:
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD, OPTIONS")
            return control()
        if req.path == "/":
            return await self._proxy(req, None)
        if self.config.forward_paths:
            path = _safe_path(req.path)
            if path is None:
                return _error(
                    400, jsonrpc.error_body(None, jsonrpc.INVALID_REQUEST, "Invalid path")
                )
            return await self._proxy(req, path + (f"?{req.query}" if req.query else ""))
        return _error(
            404,
            jsonrpc.error_body(
                None, jsonrpc.METHOD_NOT_FOUND, f"Not found: {req.path} (JSON-RPC is served at /)"
            ),
        )

    # -- the proxy -----------------------------------------------------------------------

    async def _proxy(self, req: HttpRequest, path: str | None) -> HttpResponse:
        method = req.method.upper()
        call: RpcCall | None = None
        if method == "POST":
            parsed = jsonrpc.parse(req.body)
            if isinstance(parsed, RpcProblem):
                return _error(parsed.http_status, parsed.body())
            call = parsed
        elif method not in ("GET", "HEAD"):
            return self._not_allowed(ALLOW)
        balancer = self.balancer
        chain = balancer.chain
        broadcast = call is not None and any(chain.is_broadcast(m) for m in call.methods)
        forwarded = req.headers.get("x-forwarded-for")
        ip = client_ip(req.peer, forwarded, balancer.trusted_proxies)
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": self.config.user_agent,
            "x-forwarded-for": f"{forwarded}, {req.peer}" if forwarded else req.peer,
        }
        outcome = await balancer.router.forward(
            ProxyRequest(
                method="POST" if call is not None else "GET",
                path=path,
                headers=headers,
                body=req.body if call is not None else None,
                broadcast=broadcast,
                client_ip=ip,
            )
        )
        return self._answer(outcome, call)

    def _answer(self, outcome: Outcome, call: RpcCall | None) -> HttpResponse:
        resp, node = outcome.response, outcome.node
        if resp is None or node is None:
            return self._failure(outcome, call)
        headers = [("content-type", resp.content_type), *_CORS]
        headers += [(k, v) for k, v in resp.headers if k != "content-type"]
        headers.append(("x-rpc-node", node.name))
        headers.append(("x-rpc-attempts", str(outcome.attempts)))
        if outcome.hedged:
            headers.append(("x-rpc-hedged", "1"))
        probe = node.probe
        if probe is not None and probe.version:
            headers.append(("x-rpc-node-version", probe.version))
        body = resp.body
        if self.annotate == "body":
            body = _annotate(body, node.name, probe.version_doc if probe else None)
        return HttpResponse(resp.status, headers, body)

    def _failure(self, outcome: Outcome, call: RpcCall | None) -> HttpResponse:
        error: RpcBalancerError = outcome.error or NoHealthyNode("no node answered")
        tries = outcome.attempts
        if isinstance(error, NoHealthyNode):
            status, code = 503, jsonrpc.NO_NODE
            message = f"Service unavailable: {error}"
        elif isinstance(error, UpstreamTimeout):
            status, code = 504, jsonrpc.UPSTREAM_TIMEOUT
            message = f"Upstream timeout after {tries} {'try' if tries == 1 else 'tries'}: {error}"
        elif isinstance(error, UpstreamError):
            status, code = 502, jsonrpc.UPSTREAM_FAILED
            message = f"Upstream failed after {tries} {'try' if tries == 1 else 'tries'}: {error}"
        else:
            status, code, message = 502, jsonrpc.UPSTREAM_FAILED, str(error)
        extra = (("x-rpc-attempts", str(tries)),)
        return _error(status, jsonrpc.error_body_for(call, code, message), extra)

    # -- control routes ------------------------------------------------------------------

    def _health(self) -> HttpResponse:
        ok, doc = health_doc(self.balancer.fleet, self.balancer.clock())
        return _json(200 if ok else 503, doc)

    def _version(self) -> HttpResponse:
        return _json(
            200,
            {
                "name": "rpcbalancer",
                "version": __version__,
                "chain": self.config.chain,
                "strategy": self.config.strategy.name,
            },
        )

    def _status(self) -> HttpResponse:
        b = self.balancer
        return _json(
            200,
            status_doc(
                b.fleet,
                b.clock(),
                chain=b.chain.name,
                strategy=b.router.policy.name,
                started_at=b.started_at,
            ),
        )

    def _preflight(self, req: HttpRequest) -> HttpResponse:
        asked = req.headers.get("access-control-request-headers", "content-type")
        return HttpResponse(
            204,
            [
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", ALLOW),
                ("access-control-allow-headers", asked[:1024]),
                ("access-control-max-age", "86400"),
                ("allow", ALLOW),
            ],
        )

    @staticmethod
    def _not_allowed(allow: str) -> HttpResponse:
        return _error(
            405,
            jsonrpc.error_body(None, jsonrpc.INVALID_REQUEST, f"Method not allowed: use {allow}"),
            (("allow", allow),),
        )


def _annotate(body: bytes, server: str, version: Any) -> bytes:
    """The original design's reply: a JSON object gains ``__server__`` and ``__version__``.
    Anything else (a batch array, a non-JSON body) is returned as it is."""
    if body.lstrip()[:1] != b"{":
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    doc["__server__"] = server
    doc["__version__"] = version
    return orjson.dumps(doc)


def _safe_path(path: str) -> str | None:
    """A client path fit to append to a node URL: absolute, normalised, no way up."""
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    segments = path.split("/")
    if ".." in segments or "." in segments:
        return None
    normal = posixpath.normpath(path)
    return normal if normal.startswith("/") and not normal.startswith("//") else None
