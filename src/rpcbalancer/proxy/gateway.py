"""The gateway: HTTP request in, HTTP response out, the same for every host.

It holds the routes (the proxy at ``/``, ``/health``, ``/version``, ``/status.json``, the
``/status`` page and its ``/status/history.json``, ``/metrics``), CORS, the access log,
and the one place where errors become responses: JSON-RPC error objects with the request's
id echoed, and an HTTP status by cause (400 bad request, 502 bad upstream, 503 no node,
504 deadline). Hosts adapt their own request shapes to :class:`HttpRequest`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import __version__, jsonrpc
from ..balancer import Balancer
from ..callbacks import Cancellable, until_called
from ..config import ApiKey, RateLimit, parse_duration
from ..errors import NoHealthyNode, RpcBalancerError, UpstreamError, UpstreamTimeout
from ..fleet.nodes import LATENCY_BUCKETS
from ..jsonrpc import RpcCall, RpcProblem
from ..observe.accesslog import access_line
from ..observe.metrics import PROMETHEUS_TYPE, render
from ..observe.statuspage import PAGE_SECURITY as _PAGE_SECURITY
from ..observe.statuspage import STATUS_PAGE
from ..observe.views import health_doc, history_doc, status_doc
from .clientip import client_ip
from .ratelimit import retry_after
from .router import Outcome, ProxyRequest

log = logging.getLogger(__name__)

HISTORY_CACHE_S = 20.0
HISTORY_CACHE_ENTRIES = 8
"""Seconds a history answer is reused: many open pages must not mean many store reads."""

ALLOW = "GET, HEAD, POST, OPTIONS"
_CORS = (
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "x-rpc-node, x-rpc-attempts, x-rpc-node-version, x-rpc-hedged, x-rpc-scores, x-request-id",
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


Reply = Callable[[HttpResponse], None]
"""How a host receives the answer on the callback door (:meth:`Gateway.serve`)."""


class _Job:
    """A proxied request admitted so far: what the later steps need of the earlier ones."""

    __slots__ = ("call", "forwarded", "ip", "key", "path", "req", "rid", "start")

    def __init__(
        self,
        req: HttpRequest,
        path: str | None,
        key: ApiKey | None,
        call: RpcCall | None,
        start: float,
        rid: str,
        ip: str,
        forwarded: str | None,
    ) -> None:
        self.req = req
        self.path = path
        self.key = key
        self.call = call
        self.start = start
        self.rid = rid
        self.ip = ip
        self.forwarded = forwarded


def internal_error() -> HttpResponse:
    return _error(
        500,
        jsonrpc.error_body(None, jsonrpc.INTERNAL_ERROR, "Internal error in the balancer"),
    )


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
        self._control: dict[str, Callable[[], HttpResponse]] = {
            "/health": self._health,
            "/version": self._version,
            "/status.json": self._status,
            "/status": self._page,
        }
        if self.config.metrics.enabled:
            self._control["/metrics"] = self._metrics
        self._history_cache: dict[float, tuple[float, dict[str, Any]]] = {}
        self._may_limit = self.config.rate_limit is not None or balancer.keys is not None
        """Whether any request can meet a rate limit (the global one, or a key's own)."""

    def handle(self, req: HttpRequest) -> Awaitable[HttpResponse]:
        """Answer one request (the awaitable door: ASGI, Lambda)."""
        if req.path == "/" and req.method != "OPTIONS":
            return self._proxy(req, None)
        return self._other(req)

    def serve(self, req: HttpRequest, reply: Reply) -> Cancellable | None:
        """Answer one request through ``reply`` (the callback door: the standalone server's
        data plane). The proxy route runs on callbacks alone; other routes, and a rate
        limit kept in Redis, run as a task. ``reply`` is called once, possibly before this
        returns, unless the returned handle is cancelled first (the client went away)."""
        if req.path == "/" and req.method != "OPTIONS" and self.balancer.shared_limiter is None:
            job = self._admit(req, None, None)
            if isinstance(job, HttpResponse):
                reply(job)
                return None
            if self._may_limit:
                limited = self._limit(job, None)
                if limited is not None:
                    reply(limited)
                    return None
            return self._dispatch(job, reply)
        task: asyncio.Future[HttpResponse] = asyncio.ensure_future(self.handle(req))
        task.add_done_callback(lambda t: _reply_with(t, req, reply))
        return task

    async def _other(self, req: HttpRequest) -> HttpResponse:
        method = req.method.upper()
        if method == "OPTIONS":
            return self._preflight(req)
        control = self._control.get(req.path)
        if control is not None or req.path == "/status/history.json":
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD, OPTIONS")
            return control() if control is not None else await self._history(req)
        if req.path == "/":
            return await self._proxy(req, None)
        keys = self.balancer.keys
        if keys is not None:
            key = keys.from_path(req.path)
            if key is not None:
                return await self._proxy(req, None, key)
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

    async def _proxy(
        self, req: HttpRequest, path: str | None, key: ApiKey | None = None
    ) -> HttpResponse:
        job = self._admit(req, path, key)
        if isinstance(job, HttpResponse):
            return job
        wait = None
        limit = self._rate_limit(job)
        shared = self.balancer.shared_limiter
        if limit is not None and shared is not None and limit.shared:
            wait = await shared.take(self._client(job), limit, self._cost(job, limit))
        limited = self._limit(job, wait)
        if limited is not None:
            return limited
        return await until_called(lambda reply: self._dispatch(job, reply))

    def _admit(self, req: HttpRequest, path: str | None, key: ApiKey | None) -> _Job | HttpResponse:
        """Parse and check what needs no node: a JSON-RPC call that may go on, or the
        answer (already counted) that ends the request here."""
        balancer = self.balancer
        start = balancer.clock()
        headers = req.headers
        rid = balancer.request_ids.get(headers.get("x-request-id"))
        forwarded = headers.get("x-forwarded-for")
        ip = client_ip(req.peer, forwarded, balancer.trusted_proxies)
        method = req.method
        keys = balancer.keys
        allowed: Callable[[str], bool] | None = (
            balancer.methods.allowed if balancer.methods.active else None
        )
        if keys is not None:
            key = key or keys.find(headers.get(keys.header))
            if key is not None:
                allowed = keys.rules(key) or allowed
        call: RpcCall | None = None
        if method == "POST" or method.upper() == "POST":
            limits = self.config.limits
            parsed = jsonrpc.parse(
                req.body, max_batch=limits.max_batch, max_depth=limits.max_depth, allowed=allowed
            )
            if isinstance(parsed, RpcProblem):
                response = _error(parsed.http_status, parsed.body())
                return self._done(req, None, None, response, start, rid, ip)
            call = parsed
        elif method.upper() not in ("GET", "HEAD"):
            return self._done(req, None, None, self._not_allowed(ALLOW), start, rid, ip)
        if keys is not None and key is None and keys.config.required:
            return self._done(req, call, None, self._unauthorized(call), start, rid, ip)
        return _Job(req, path, key, call, start, rid, ip, forwarded)

    def _rate_limit(self, job: _Job) -> RateLimit | None:
        key = job.key
        return key.rate_limit if key is not None and key.rate_limit else self.config.rate_limit

    @staticmethod
    def _client(job: _Job) -> str:
        return f"key:{job.key.name}" if job.key is not None else f"ip:{job.ip}"

    @staticmethod
    def _cost(job: _Job, limit: RateLimit) -> int:
        # One token per call; a batch larger than the bucket empties it rather than never
        # passing at all.
        call = job.call
        calls = len(call.methods) + len(call.rejected) if call is not None else 1
        return min(calls, limit.burst)

    def _limit(self, job: _Job, wait: float | None) -> HttpResponse | None:
        """The rate limit's answer when the client is over it (``wait``: the shared
        limiter's verdict, when it was asked), else None."""
        limit = self._rate_limit(job)
        if limit is None:
            return None
        if wait is None:
            wait = self.balancer.limiter.take(self._client(job), limit, self._cost(job, limit))
        if wait <= 0:
            return None
        response = self._limited(job.call, limit, wait)
        return self._done(job.req, job.call, None, response, job.start, job.rid, job.ip)

    def _dispatch(self, job: _Job, reply: Reply) -> Cancellable | None:
        """Send the admitted request on to a node; ``reply`` gets the answer."""
        call, req = job.call, job.req
        if call is not None and not call.methods:  # every batch member was answered here
            answers = jsonrpc.dumps(jsonrpc.rejected_answers(call))
            reply(self._done(req, call, None, _error(200, answers), job.start, job.rid, job.ip))
            return None
        balancer = self.balancer
        chain = balancer.chain
        if call is None:
            broadcast = False
        elif len(call.methods) == 1:
            broadcast = chain.is_broadcast(call.methods[0])
        else:
            broadcast = any(chain.is_broadcast(m) for m in call.methods)
        forwarded = job.forwarded
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": self.config.user_agent,
            "x-forwarded-for": f"{forwarded}, {req.peer}" if forwarded else req.peer,
            "x-request-id": job.rid,
        }

        def finish(outcome: Outcome) -> None:
            try:
                response = self._complete(job, outcome)
            except Exception:
                log.exception("unexpected error answering %s %s", req.method, req.path)
                response = internal_error()
            reply(response)

        answered = finish
        staged: _Staged | None = None
        if self.annotate == "body":
            # The original reply shape needs the serving node's version: when no probe has
            # read it yet, it is asked first (once per node), within the request's deadline.
            staged = _Staged()

            def answered(outcome: Outcome) -> None:
                node = outcome.node
                versions = balancer.versions
                if node is not None and outcome.response is not None:
                    now = balancer.clock()
                    if not versions.known(node, now)[0]:
                        left = job.start + balancer.router.total - now
                        assert staged is not None
                        staged.stage = versions.ask(
                            node, max(0.001, left), lambda _answer: finish(outcome)
                        )
                        return
                finish(outcome)

        forwarding = balancer.router.start(
            ProxyRequest(
                method="POST" if call is not None else "GET",
                path=job.path,
                headers=headers,
                body=(call.body or req.body) if call is not None else None,
                broadcast=broadcast,
                client_ip=job.ip,
            ),
            answered,
        )
        if staged is None:
            return forwarding
        if staged.stage is None:
            staged.stage = forwarding
        return staged

    def _complete(self, job: _Job, outcome: Outcome) -> HttpResponse:
        call, req = job.call, job.req
        response = self._answer(outcome, call)
        if call is not None and response.status < 400:
            if call.silent:  # notifications only: the spec gives them no answer
                response = HttpResponse(204, [_CORS[0]])
            elif call.rejected:
                response.body = _with_rejected(response.body, call)
        if self.config.explain and req.headers.get("x-rpc-explain") == "1":
            response.headers.append(("x-rpc-scores", self._scores()))
        return self._done(req, call, outcome, response, job.start, job.rid, job.ip)

    def _done(
        self,
        req: HttpRequest,
        call: RpcCall | None,
        outcome: Outcome | None,
        response: HttpResponse,
        start: float,
        rid: str,
        ip: str,
    ) -> HttpResponse:
        """Count the request, log it, and give the answer its request id."""
        balancer = self.balancer
        stats = balancer.stats
        seconds = balancer.clock() - start
        kind = _outcome_kind(outcome, response.status)
        key = (stats.method_label(call), kind)
        stats.requests[key] = stats.requests.get(key, 0) + 1
        stats.duration[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.duration_sum += seconds
        stats.bytes_in += len(req.body)
        stats.bytes_out += len(response.body)
        attempts = 0
        if outcome is not None:
            attempts = len(outcome.tried)
            if outcome.hedged:
                stats.hedges += 1
                attempts -= 1
                if outcome.node is not None and outcome.node is outcome.tried[-1]:
                    stats.hedge_wins += 1
            if attempts > 1:
                stats.retries += attempts - 1
        response.headers.append(("x-request-id", rid))
        log = balancer.access_log
        if log is not None and (
            kind != "ok" or log.config.sample >= 1.0 or balancer.rng.random() < log.config.sample
        ):
            keys = balancer.keys
            secret_path = (
                req.path != "/" and keys is not None and keys.from_path(req.path) is not None
            )
            log.write(
                access_line(req, call, outcome, response, seconds, rid, ip, kind, log, secret_path)
            )
        return response

    def _unauthorized(self, call: RpcCall | None) -> HttpResponse:
        keys = self.balancer.keys
        assert keys is not None
        message = (
            f"Unauthorized: a valid API key is required (header {keys.config.header}, or POST /KEY)"
        )
        return _error(
            401,
            jsonrpc.error_body_for(call, jsonrpc.UNAUTHORIZED, message),
            (("www-authenticate", "ApiKey"),),
        )

    @staticmethod
    def _limited(call: RpcCall | None, limit: RateLimit, wait: float) -> HttpResponse:
        message = (
            f"Too many requests: at most {limit.rate:g} calls a second (bursts of {limit.burst}); "
            f"retry in {wait:.1f} s"
        )
        body = jsonrpc.error_body_for(call, jsonrpc.RATE_LIMITED, message)
        return _error(429, body, (("retry-after", retry_after(wait)),))

    def _scores(self) -> str:
        """``name=score`` for each usable node (lower wins), or how the policy picks."""
        policy = self.balancer.router.policy
        now = self.balancer.clock()
        nodes, _ = self.balancer.fleet.candidates(now)
        parts = []
        for node in nodes:
            score, _ = policy.explain(node, now)
            if score is not None:
                parts.append(f"{node.name}={score:.6g}")
        return "; ".join(parts) if parts else f"{policy.name}: {policy.how}"

    def _answer(self, outcome: Outcome, call: RpcCall | None) -> HttpResponse:
        resp, node = outcome.response, outcome.node
        if resp is None or node is None:
            return self._failure(outcome, call)
        kept = resp.headers
        if len(kept) == 1 and kept[0][0] == "content-type":  # the usual case
            headers = [kept[0], *_CORS]
        else:
            headers = [("content-type", resp.content_type), *_CORS]
            headers += [(k, v) for k, v in kept if k != "content-type"]
        headers.append(("x-rpc-node", node.name))
        headers.append(("x-rpc-attempts", str(outcome.attempts)))
        if outcome.hedged:
            headers.append(("x-rpc-hedged", "1"))
        probe = node.probe
        if probe is not None and probe.version:
            headers.append(("x-rpc-node-version", probe.version))
        body = resp.body
        if self.annotate == "body":
            _, version = self.balancer.versions.known(node, self.balancer.clock())
            body = _annotate(body, node.name, version)
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
        return _json(200, status_doc(self.balancer), (("cache-control", "no-store"),))

    def _page(self) -> HttpResponse:
        return HttpResponse(
            200,
            [
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
                *_PAGE_SECURITY,
            ],
            STATUS_PAGE,
        )

    def _metrics(self) -> HttpResponse:
        b = self.balancer
        body = render(b, b.stats, b.snapshots)
        return HttpResponse(200, [("content-type", PROMETHEUS_TYPE)], body)

    async def _history(self, req: HttpRequest) -> HttpResponse:
        """The canary's history from the store, bucketed for the status page's charts."""
        window = 3 * 3600.0
        for part in req.query.split("&"):
            name, _, value = part.partition("=")
            if name == "window":
                try:
                    window = min(7 * 86400.0, parse_duration(value))
                except ValueError as exc:
                    return _error(400, jsonrpc.error_body(None, jsonrpc.INVALID_PARAMS, str(exc)))
        store = self.balancer.store
        until = time.time()
        if store is None:
            return _json(
                200,
                {"since": until - window, "until": until, "nodes": {}, "note": "no health store"},
            )
        cache = self._history_cache
        cached = cache.get(window)
        if cached is not None and until - cached[0] < HISTORY_CACHE_S:
            return _json(200, cached[1])
        try:
            records = await store.history(until - window)
        except Exception as exc:
            return _json(503, {"error": f"the health store cannot be read: {type(exc).__name__}"})
        doc = history_doc(records, self.balancer.fleet, since=until - window, until=until)
        if len(cache) >= HISTORY_CACHE_ENTRIES:  # clients choose the window: keep few
            cache.clear()
        cache[window] = (until, doc)
        return _json(200, doc)

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


class _Staged:
    """The handle of a request that may wait for its node's version after the forwarding
    (``annotate: body``): cancels whichever stage is under way."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage: Cancellable | None = None

    def cancel(self) -> None:
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.cancel()


def _reply_with(task: asyncio.Future[HttpResponse], req: HttpRequest, reply: Reply) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("unexpected error answering %s %s", req.method, req.path, exc_info=exc)
        reply(internal_error())
        return
    reply(task.result())


def _with_rejected(body: bytes, call: RpcCall) -> bytes:
    """A node's batch answer with the answers of the members refused here added."""
    try:
        answers = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(answers, list):
        answers = [answers]
    return jsonrpc.dumps(answers + jsonrpc.rejected_answers(call))


def _outcome_kind(outcome: Outcome | None, status: int) -> str:
    """A bounded label for how a request ended (see :data:`.metrics.OUTCOMES`)."""
    if outcome is not None and outcome.error is not None and outcome.response is None:
        if isinstance(outcome.error, NoHealthyNode):
            return "no_node"
        if isinstance(outcome.error, UpstreamTimeout):
            return "timeout"
        return "upstream_error"
    if status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "denied"
    if status < 500:
        return "client_error"
    return "upstream_error" if outcome is not None else "internal"


def _annotate(body: bytes, server: str, version: Any) -> bytes:
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


def _safe_path(path: str) -> str | None:
    """A client path fit to append to a node URL: absolute, normalised, no way up."""
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    segments = path.split("/")
    if ".." in segments or "." in segments:
        return None
    normal = posixpath.normpath(path)
    return normal if normal.startswith("/") and not normal.startswith("//") else None
