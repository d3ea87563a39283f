"""The gateway: HTTP request in, HTTP response out, the same for every host.

Theory of operation
-------------------
A request for the proxy (``POST /``, ``GET /``, an API key's path, a forwarded path) goes
through three steps, each once, in this order:

1. **admission** (:meth:`Gateway._admit`, then the rate limit): who the client is (address,
   request id, API key), what it asks (the JSON-RPC call parsed once, members refused by the
   method rules answered here), whether it may. It yields a :class:`Job`; a request that
   ends here carries its answer already (``job.answer``).
2. **dispatch** (:meth:`Gateway._dispatch`): the router forwards the call to a node and
   reports the :class:`~.router.Outcome`; :meth:`Gateway._respond` turns it into the answer
   (the node's bytes and the ``X-RPC-*`` headers, or the error the failure table gives).
3. **accounting** (:meth:`Gateway._account`): metrics, the access line, the request id.

Every error answer is built by :func:`~rpcbalancer.messages.error_response` from the one
failure table. The control routes (health, status, metrics) live in :mod:`.control`.

Two doors, one logic: :meth:`Gateway.serve` (callbacks: the standalone server's data plane,
no task per request) and :meth:`Gateway.handle` (awaitable: ASGI, Lambda).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable

from .. import jsonrpc
from ..balancer import Balancer
from ..callbacks import Cancellable, until_called
from ..config import ApiKey, RateLimit
from ..fleet.nodes import LATENCY_BUCKETS
from ..jsonrpc import RpcCall, RpcProblem
from ..messages import (
    CORS,
    FAILURES,
    JSON,
    HttpRequest,
    HttpResponse,
    Reply,
    error_response,
    failure_of,
    internal_error,
    outcome_of,
)
from ..observe.accesslog import AccessLog, access_line
from .answering import Staged, annotate, reply_with, safe_path, with_rejected
from .clientip import client_ip
from .control import ALLOW, Control, not_allowed, preflight
from .dispatch import Dispatched
from .ratelimit import retry_after
from .router import Outcome, ProxyRequest

log = logging.getLogger(__name__)

__all__ = ["Gateway", "HttpRequest", "HttpResponse", "Reply"]


class Job:
    """One proxied request on its way through the three steps: what each needs of the
    earlier ones, and the answer once there is one."""

    __slots__ = (
        "answer",
        "call",
        "forwarded",
        "ip",
        "key",
        "outcome",
        "path",
        "req",
        "rid",
        "start",
    )

    def __init__(self, req: HttpRequest, path: str | None, start: float) -> None:
        self.req = req
        self.path = path
        """The path to forward to (``forward_paths``), or None for the node's own URL."""
        self.start = start
        self.key: ApiKey | None = None
        self.call: RpcCall | None = None
        self.rid = ""
        self.ip = ""
        self.forwarded: str | None = None
        self.answer: HttpResponse | None = None
        self.outcome: Outcome | None = None


class Gateway:
    def __init__(self, balancer: Balancer, *, annotate: str | None = None) -> None:
        self.balancer = balancer
        self.config = balancer.config
        self.annotate = annotate or self.config.annotate
        """``body``: the original design's ``__server__``/``__version__`` in JSON answers."""
        self.control = Control(balancer)
        self._may_limit = self.config.rate_limit is not None or balancer.keys is not None
        """Whether any request can meet a rate limit (the global one, or a key's own)."""

    # -- the two doors -------------------------------------------------------------------

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
            if job.answer is None and self._may_limit:
                job.answer = self._limit(job, None)
            if job.answer is not None:
                reply(self._account(job))
                return None
            return self._dispatch(job, reply)
        task: asyncio.Future[HttpResponse] = asyncio.ensure_future(self.handle(req))
        task.add_done_callback(lambda t: reply_with(t, req, reply))
        return task

    async def _other(self, req: HttpRequest) -> HttpResponse:
        if req.method.upper() == "OPTIONS":
            return preflight(req)
        control = self.control
        if control.serves(req.path):
            return await control.answer(req)
        if req.path == "/":
            return await self._proxy(req, None)
        keys = self.balancer.keys
        if keys is not None:
            key = keys.from_path(req.path)
            if key is not None:
                return await self._proxy(req, None, key)
        if self.config.forward_paths:
            path = safe_path(req.path)
            if path is None:
                return error_response("invalid", "Invalid path")
            return await self._proxy(req, path + (f"?{req.query}" if req.query else ""))
        return error_response("not_found", f"Not found: {req.path} (JSON-RPC is served at /)")

    async def _proxy(
        self, req: HttpRequest, path: str | None, key: ApiKey | None = None
    ) -> HttpResponse:
        job = self._admit(req, path, key)
        if job.answer is None and self._may_limit:
            wait = None
            limit = self._rate_limit(job)
            shared = self.balancer.shared_limiter
            if limit is not None and shared is not None and limit.shared:
                wait = await shared.take(self._client(job), limit, self._cost(job, limit))
            job.answer = self._limit(job, wait)
        if job.answer is not None:
            return self._account(job)
        return await until_called(lambda reply: self._dispatch(job, reply))

    # -- 1. admission --------------------------------------------------------------------

    def _admit(self, req: HttpRequest, path: str | None, key: ApiKey | None) -> Job:
        """Who asks what, and may they: the job, with its answer set when it ends here."""
        balancer = self.balancer
        job = Job(req, path, balancer.clock())
        headers = req.headers
        job.rid = balancer.request_ids.get(headers.get("x-request-id"))
        job.forwarded = headers.get("x-forwarded-for")
        job.ip = client_ip(req.peer, job.forwarded, balancer.trusted_proxies)
        keys = balancer.keys
        allowed: Callable[[str], bool] | None = (
            balancer.methods.allowed if balancer.methods.active else None
        )
        if keys is not None:
            key = key or keys.find(headers.get(keys.header))
            if key is not None:
                allowed = keys.rules(key) or allowed
        job.key = key
        method = req.method
        if method == "POST" or method.upper() == "POST":
            limits = self.config.limits
            parsed = jsonrpc.parse(
                req.body, max_batch=limits.max_batch, max_depth=limits.max_depth, allowed=allowed
            )
            if isinstance(parsed, RpcProblem):
                job.answer = HttpResponse(parsed.http_status, [JSON, *CORS], parsed.body())
                return job
            job.call = parsed
        elif method.upper() not in ("GET", "HEAD"):
            job.answer = not_allowed(ALLOW)
            return job
        if keys is not None and key is None and keys.config.required:
            message = (
                "Unauthorized: a valid API key is required "
                f"(header {keys.config.header}, or POST /KEY)"
            )
            job.answer = error_response(
                "unauthorized", message, job.call, headers=(("www-authenticate", "ApiKey"),)
            )
        return job

    def _rate_limit(self, job: Job) -> RateLimit | None:
        key = job.key
        return key.rate_limit if key is not None and key.rate_limit else self.config.rate_limit

    @staticmethod
    def _client(job: Job) -> str:
        return f"key:{job.key.name}" if job.key is not None else f"ip:{job.ip}"

    @staticmethod
    def _cost(job: Job, limit: RateLimit) -> int:
        # One token per call; a batch larger than the bucket empties it rather than never
        # passing at all.
        call = job.call
        calls = len(call.methods) + len(call.rejected) if call is not None else 1
        return min(calls, limit.burst)

    def _limit(self, job: Job, wait: float | None) -> HttpResponse | None:
        """The rate limit's answer when the client is over it (``wait``: the shared
        limiter's verdict, when it was asked), else None."""
        limit = self._rate_limit(job)
        if limit is None:
            return None
        if wait is None:
            wait = self.balancer.limiter.take(self._client(job), limit, self._cost(job, limit))
        if wait <= 0:
            return None
        message = (
            f"Too many requests: at most {limit.rate:g} calls a second (bursts of {limit.burst}); "
            f"retry in {wait:.1f} s"
        )
        return error_response(
            "rate_limited", message, job.call, headers=(("retry-after", retry_after(wait)),)
        )

    # -- 2. dispatch ---------------------------------------------------------------------

    def _dispatch(self, job: Job, reply: Reply) -> Cancellable | None:
        """Send the admitted request on to a node; ``reply`` gets the accounted answer."""
        call, req = job.call, job.req
        balancer = self.balancer
        if call is not None and not call.methods:  # every batch member was answered here
            answers = jsonrpc.dumps(jsonrpc.rejected_answers(call))
            job.answer = HttpResponse(200, [JSON, *CORS], answers)
            reply(self._account(job))
            return None
        if call is not None and balancer.dispatcher.cache is not None:
            no_cache = "no-cache" in req.headers.get("cache-control", "")
            hit = balancer.dispatcher.cached(call, no_cache)
            if hit is not None:  # the fast path: nothing is built for a node
                job.answer = self._respond_dispatched(job, hit)
                reply(self._account(job))
                return None
        forwarded = job.forwarded
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": self.config.user_agent,
            "x-forwarded-for": f"{forwarded}, {req.peer}" if forwarded else req.peer,
            "x-request-id": job.rid,
        }
        if call is not None and balancer.dispatcher.active:
            return self._dispatch_routed(job, call, headers, reply)
        chain = balancer.chain
        retry_empty = False
        if call is None:
            broadcast = False
        elif len(call.methods) == 1:
            method = call.methods[0]
            broadcast = chain.is_broadcast(method)
            if not call.batch and call.members:
                params = call.members[0].get("params")
                retry_empty = chain.empty_is_unsure(method, params, balancer.fleet.best_head)
        else:
            broadcast = any(chain.is_broadcast(m) for m in call.methods)

        def finish(outcome: Outcome) -> None:
            job.outcome = outcome
            try:
                job.answer = self._respond(job, outcome)
            except Exception:
                log.exception("unexpected error answering %s %s", req.method, req.path)
                job.answer = internal_error()
            reply(self._account(job))

        answered = finish
        staged: Staged | None = None
        if self.annotate == "body":
            # The original reply shape needs the serving node's version: when no probe has
            # read it yet, it is asked first (once per node), within the request's deadline.
            staged = Staged()

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
                idempotent=not broadcast,
                client_ip=job.ip,
                deadline=self._deadline(job),
                retry_empty=retry_empty,
            ),
            answered,
        )
        if staged is None:
            return forwarding
        if staged.stage is None:
            staged.stage = forwarding
        return staged

    def _deadline(self, job: Job) -> float | None:
        """A client's own deadline (``X-RPC-Timeout: seconds``), when shorter than ours."""
        asked = job.req.headers.get("x-rpc-timeout")
        if asked is None:
            return None
        try:
            seconds = float(asked)
        except ValueError:
            return None
        if not 0 < seconds < self.balancer.router.total:
            return None
        return job.start + seconds

    def _dispatch_routed(
        self, job: Job, call: RpcCall, headers: dict[str, str], reply: Reply
    ) -> Cancellable | None:
        """Through the routes, the answer cache and coalescing (:mod:`.dispatch`)."""
        balancer = self.balancer
        dispatcher = balancer.dispatcher
        no_cache = "no-cache" in job.req.headers.get("cache-control", "")
        deadline = self._deadline(job)
        staged = Staged()

        def finish(result: Dispatched) -> None:
            job.outcome = result.outcome
            try:
                job.answer = self._respond_dispatched(job, result)
            except Exception:
                log.exception("unexpected error answering %s %s", job.req.method, job.req.path)
                job.answer = internal_error()
            reply(self._account(job))

        def finished(result: Dispatched) -> None:
            # The original reply shape needs the serving node's version (asked once).
            outcome = result.outcome
            node = outcome.node if outcome is not None else None
            now = balancer.clock()
            if (
                self.annotate == "body"
                and result.body is None
                and node is not None
                and outcome is not None
                and outcome.response is not None
                and not balancer.versions.known(node, now)[0]
            ):
                left = job.start + balancer.router.total - now
                staged.stage = balancer.versions.ask(
                    node, max(0.001, left), lambda _answer: finish(result)
                )
                return
            finish(result)

        if call.batch:
            handle = dispatcher.batch(call, deadline, no_cache, job.ip, headers, finished)
        else:
            handle = dispatcher.single(
                call, call.first_id, deadline, no_cache, job.ip, headers, finished
            )
        if staged.stage is None:
            staged.stage = handle
        return staged

    def _respond_dispatched(self, job: Job, result: Dispatched) -> HttpResponse:
        call = job.call
        if result.body is None and result.outcome is not None:
            response = self._respond(job, result.outcome)
        else:
            body = result.body or b""
            if call is not None and call.rejected:
                body = with_rejected(body, call)
            response = HttpResponse(result.status, [JSON, *CORS], body)
            nodes = list(dict.fromkeys(result.nodes))
            if nodes:
                response.headers.append(("x-rpc-node", ", ".join(nodes)))
                if self.annotate == "body" and call is not None and not call.batch:
                    balancer = self.balancer
                    node = next((n for n in balancer.fleet.nodes if n.name == nodes[0]), None)
                    version = None
                    if node is not None:
                        version = balancer.versions.known(node, balancer.clock())[1]
                    response.body = annotate(response.body, nodes[0], version)
        if result.groups:
            response.headers.append(("x-rpc-upstream", ",".join(dict.fromkeys(result.groups))))
        if result.cache:
            response.headers.append(("x-cache", result.cache))
        return response

    def _respond(self, job: Job, outcome: Outcome) -> HttpResponse:
        """The client's answer from how the forwarding ended."""
        call = job.call
        resp, node = outcome.response, outcome.node
        if resp is None or node is None:
            tries = outcome.attempts
            error = outcome.error
            kind = failure_of(error)
            prefix = {
                "no_node": "Service unavailable",
                "timeout": f"Upstream timeout after {tries} {'try' if tries == 1 else 'tries'}",
            }.get(kind, f"Upstream failed after {tries} {'try' if tries == 1 else 'tries'}")
            message = f"{prefix}: {error}" if error is not None else f"{prefix}: no node answered"
            return error_response(kind, message, call, headers=(("x-rpc-attempts", str(tries)),))
        kept = resp.headers
        if len(kept) == 1 and kept[0][0] == "content-type":  # the usual case
            headers = [kept[0], *CORS]
        else:
            headers = [("content-type", resp.content_type), *CORS]
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
            body = annotate(body, node.name, version)
        status = resp.status
        if call is not None and status < 400:
            if call.silent:  # notifications only: the spec gives them no answer
                return HttpResponse(204, [CORS[0]])
            if call.rejected:
                body = with_rejected(body, call)
        response = HttpResponse(status, headers, body)
        if self.config.explain and job.req.headers.get("x-rpc-explain") == "1":
            response.headers.append(("x-rpc-scores", self._scores()))
        return response

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

    # -- 3. accounting -------------------------------------------------------------------

    def _account(self, job: Job) -> HttpResponse:
        """Count the request, log it, and give the answer its request id."""
        response = job.answer
        assert response is not None
        balancer = self.balancer
        stats = balancer.stats
        req, call, outcome = job.req, job.call, job.outcome
        seconds = balancer.clock() - job.start
        kind = _outcome_kind(outcome, response.status)
        key = (stats.method_label(call), kind)
        stats.requests[key] = stats.requests.get(key, 0) + 1
        stats.duration[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.duration_sum += seconds
        stats.bytes_in += len(req.body)
        stats.bytes_out += len(response.body)
        if outcome is not None:
            attempts = len(outcome.tried)
            if outcome.hedged:
                stats.hedges += 1
                attempts -= 1
                if outcome.node is not None and outcome.node is outcome.tried[-1]:
                    stats.hedge_wins += 1
            if attempts > 1:
                stats.retries += attempts - 1
        response.headers.append(("x-request-id", job.rid))
        access = balancer.access_log
        if access is not None and (
            kind != "ok"
            or access.config.sample >= 1.0
            or balancer.rng.random() < access.config.sample
        ):
            self._log(access, job, response, seconds, kind)
        return response

    def _log(
        self, access: AccessLog, job: Job, response: HttpResponse, seconds: float, kind: str
    ) -> None:
        req, outcome = job.req, job.outcome
        served = None
        if outcome is not None:
            served = {
                "node": outcome.node.name if outcome.node is not None else None,
                "attempts": len(outcome.tried),
                "hedged": outcome.hedged,
                "error": str(outcome.error)[:300] if outcome.error is not None else None,
            }
        keys = self.balancer.keys
        secret_path = req.path != "/" and keys is not None and keys.from_path(req.path) is not None
        line = access_line(
            req, job.call, response, seconds, job.rid, job.ip, kind, access, secret_path, served
        )
        access.write(line)


def _outcome_kind(outcome: Outcome | None, status: int) -> str:
    """A bounded label for how a request ended (the failure table's, or the status's)."""
    if outcome is not None and outcome.response is None:
        return FAILURES[failure_of(outcome.error)].outcome
    if outcome is not None and status >= 500:
        return "upstream_error"  # a node's own error, passed on (a broadcast's)
    return outcome_of(status)
