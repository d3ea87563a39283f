"""The gateway: HTTP request in, HTTP response out, the same way for every call and every host.

Theory of operation
-------------------
Every proxied request takes one way, each step in its own module, each entered once on the
way down to the node and once on the way back:

1. **admission** (:mod:`.admission`): who asks what, and may they. It makes the request's
   :class:`~.context.RequestContext`, which every later step reads and writes; a request
   refused here carries its answer already.
2. **plan** (:mod:`.plan`): the call's route, group, TTL, cache key and what is sent (a
   dictionary hit for a method planned before). A balancer with one group and no routes is
   the one-group case of the same way.
3. **cache** (:mod:`.lookup`): a read with a TTL answered from this process's cache at once,
   or from Redis after a round trip.
4. **coalesce** (:mod:`.coalesce`): a miss follows an identical read in flight, or leads.
5. **route** (:mod:`.router`, :mod:`.forwarding`): the group's router picks a node and
   forwards, with hedges and retries.
6. **learn** (:mod:`.learn`): what the answer teaches (the chain's head and last
   irreversible block; the answer itself, for the cache).
7. **answer** (:mod:`.answer`) and **account** (:mod:`.accounting`): the response, counted
   and logged, written back.

A batch (:mod:`.batch`) takes the same steps member by member. Every step hands the next the
context, never a list of loose arguments; the steps after the node are reached through the
forwarding's ``done`` callback (:meth:`RequestContext.forwarded`), so no task, future or timer
is made per request on the usual way. Every error answer is built by
:func:`~rpcbalancer.messages.error_response` from the one failure table. The control routes
(health, status, metrics) live in :mod:`.control`.

Two doors, one way: :meth:`Gateway.serve` (callbacks: the standalone server's data plane) and
:meth:`Gateway.handle` (awaitable: ASGI, Lambda).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..balancer import Balancer
from ..callbacks import Cancellable, until_called
from ..config import ApiKey
from ..config.ttl import NO_CACHE
from ..fleet.nodes import Node
from ..messages import HttpRequest, HttpResponse, Reply, error_response, internal_error
from .accounting import Accounting
from .admission import Admission
from .answer import Answerer, reply_with, safe_path
from .batch import Batch
from .coalesce import Coalescer
from .context import RequestContext
from .control import Control, preflight
from .forwarding import Outcome, ProxyRequest
from .learn import Learner
from .lookup import Lookup, answer_of
from .plan import Plan, Planner

log = logging.getLogger(__name__)

__all__ = ["Gateway", "HttpRequest", "HttpResponse", "Reply"]


class Gateway:
    def __init__(self, balancer: Balancer, *, annotate: str | None = None) -> None:
        self.balancer = balancer
        config = balancer.config
        clock = balancer.clock
        self.clock = clock
        self.chain = balancer.chain
        self.stats = balancer.stats
        self.user_agent = config.user_agent
        self.shared_limiter = balancer.shared_limiter
        self.total = balancer.router.total
        self.control = Control(balancer)
        self.admission = Admission(
            config,
            balancer.request_ids,
            balancer.trusted_proxies,
            balancer.methods,
            balancer.keys,
            balancer.limiter,
            clock,
            self.total,
        )
        self.planner: Planner = balancer.planner
        self.cache = balancer.answer_cache
        self.lookup = Lookup(self.cache, clock)
        self.coalescer = (
            Coalescer(self, clock, self.total, self.lookup) if balancer.coalesce else None
        )
        self.learner = Learner(self.cache, balancer.chain, clock)
        self.answerer = Answerer(
            annotate or config.annotate,
            config.explain,
            balancer.versions,
            clock,
            balancer.fleet,
            balancer.router.policy,
            {node.name: node for node in balancer.fleet.nodes},
        )
        self.versions = balancer.versions
        self.accounting = Accounting(
            balancer.stats, balancer.access_log, balancer.keys, clock, balancer.rng
        )

    def __repr__(self) -> str:
        return f"<Gateway {self.planner!r} cache={self.cache is not None}>"

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
        returns (then this returns None), unless the returned handle is cancelled first
        (the client went away)."""
        if req.path == "/" and req.method != "OPTIONS" and self.shared_limiter is None:
            admission = self.admission
            ctx = admission.admit(req, None, None)
            if ctx.answer is None and admission.may_limit:
                admission.limit(ctx)
            return self._start(ctx, reply)
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
        if self.balancer.config.forward_paths:
            path = safe_path(req.path)
            if path is None:
                return error_response("invalid", "Invalid path")
            return await self._proxy(req, path + (f"?{req.query}" if req.query else ""))
        return error_response("not_found", f"Not found: {req.path} (JSON-RPC is served at /)")

    async def _proxy(
        self, req: HttpRequest, path: str | None, key: ApiKey | None = None
    ) -> HttpResponse:
        admission = self.admission
        ctx = admission.admit(req, path, key)
        if ctx.answer is None and admission.may_limit:
            wait = None
            limit = admission.rate_limit_of(ctx)
            shared = self.shared_limiter
            if limit is not None and shared is not None and limit.shared:
                wait = await shared.take(
                    admission.client_of(ctx), limit, admission.cost(ctx, limit)
                )
            admission.limit(ctx, wait)
        return await until_called(lambda reply: self._start(ctx, reply))

    def _start(self, ctx: RequestContext, reply: Reply) -> Cancellable | None:
        ctx.reply = reply
        ctx.way = self
        self._go(ctx)
        return None if ctx.reply is None else ctx

    # -- the way down ----------------------------------------------------------------------

    def _go(self, ctx: RequestContext) -> None:
        """From admission on: plan, cache, coalesce, route (see the module)."""
        if ctx.answer is not None:  # refused at admission
            self._finish(ctx)
            return
        call = ctx.call
        if call is None:  # GET /, or a forwarded path: the default group's, never cached
            plan = self.planner.bare
            ctx.plan = plan
            ctx.groups = plan.shape.groups
            ctx.stage = self.route(ctx, plan, ctx.forwarded)
            return
        if not call.methods:  # every batch member was answered at admission
            ctx.body = b"[]"  # (the answer step adds the refused members' answers)
            self._finish(ctx)
            return
        if call.batch:
            ctx.stage = Batch(self, ctx).start()
            return
        plan = self.planner.plan(call.members[0])
        ctx.plan = plan
        shape = plan.shape
        ctx.groups = shape.groups
        lookup = self.lookup
        if lookup.cache is not None and shape.ttl != NO_CACHE:
            if ctx.no_cache:
                ctx.verdict = "bypass"
                lookup.count(self.label(ctx), "bypass")
            else:
                entry = lookup.here(plan)
                if entry is not None:
                    lookup.count(self.label(ctx), "hit")
                    ctx.verdict = "hit"
                    ctx.body = answer_of(entry, call.first_id)
                    ctx.nodes = (entry.node,)
                    self.answer(ctx)
                    return
                ctx.verdict = "miss"
                if lookup.redis_usable():
                    ctx.stage = asyncio.get_running_loop().create_task(self._via_redis(ctx, plan))
                    return
        self._onward(ctx, plan)

    async def _via_redis(self, ctx: RequestContext, plan: Plan) -> None:
        """The cache step's second tier: Redis, then on the way as a miss."""
        entry = await self.lookup.in_redis(plan)
        if ctx.reply is None:
            return
        if entry is not None:
            self.lookup.count(self.label(ctx), "hit")
            ctx.verdict = "hit"
            ctx.body = answer_of(entry, ctx.call.first_id if ctx.call is not None else None)
            ctx.nodes = (entry.node,)
            self.answer(ctx)
            return
        self._onward(ctx, plan)

    def _onward(self, ctx: RequestContext, plan: Plan) -> None:
        """Coalesce, then route."""
        coalescer = self.coalescer
        if coalescer is not None and not plan.shape.broadcast:
            ctx.stage = coalescer.join(ctx, plan)
            return
        if ctx.verdict == "miss":
            self.lookup.count(self.label(ctx), "miss")
        ctx.stage = self.route(ctx, plan, ctx.forwarded)

    def route(
        self,
        ctx: RequestContext,
        plan: Plan,
        done: Callable[[Outcome], None],
        avoid: tuple[Node, ...] = (),
    ) -> Cancellable:
        """The route step for one call (or a ``GET``): the plan's group forwards it."""
        call = ctx.call
        shape = plan.shape
        route = shape.route
        if call is None:
            method, body, retry_empty = "GET", None, False
        else:
            method = "POST"
            body = plan.body() if shape.rewritten else (call.body or ctx.req.body)
            group = shape.group
            retry_empty = self.chain.empty_is_unsure(
                shape.parts[-1], plan.params, group.fleet.best_head
            )
        request = ProxyRequest(
            method,
            ctx.path,
            self.upstream_headers(ctx),
            body,
            not shape.broadcast,
            ctx.ip,
            route.timeout,
            route.retries,
            ctx.deadline,
            avoid,
            retry_empty,
        )
        return shape.group.router.start(request, done)

    def route_batch(
        self,
        ctx: RequestContext,
        plan: Plan,
        body: bytes,
        broadcast: bool,
        done: Callable[[Outcome], None],
    ) -> Cancellable:
        """The route step for a batch body to the group of ``plan`` (its first member's):
        a ``null`` answer is never asked again of another node here (:meth:`route` does it
        for a single call)."""
        shape = plan.shape
        route = shape.route
        request = ProxyRequest(
            "POST",
            ctx.path,
            self.upstream_headers(ctx),
            body,
            not broadcast,
            ctx.ip,
            route.timeout,
            route.retries,
            ctx.deadline,
        )
        return shape.group.router.start(request, done)

    def upstream_headers(self, ctx: RequestContext) -> dict[str, str]:
        """The headers every node asked for ``ctx`` is sent (made once, when first asked)."""
        headers = ctx.upstream_headers
        if headers is None:
            forwarded, peer = ctx.forwarded_for, ctx.req.peer
            headers = ctx.upstream_headers = {
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": self.user_agent,
                "x-forwarded-for": f"{forwarded}, {peer}" if forwarded else peer,
                "x-request-id": ctx.rid,
            }
        return headers

    # -- the way back ----------------------------------------------------------------------

    def learned(self, ctx: RequestContext, outcome: Outcome) -> None:
        """A single call's forwarding ended: learn from it, then answer."""
        plan = ctx.plan
        if plan is not None and ctx.call is not None:
            self.learner.learn(plan, outcome, self.label(ctx))
        ctx.outcome = outcome
        self.answer(ctx)

    def answer(self, ctx: RequestContext) -> None:
        """Answer ``ctx`` unless its client went away. With ``annotate: body`` a node whose
        version is not known yet is asked it first (once per node), within the deadline."""
        if ctx.reply is None:
            return
        answerer = self.answerer
        if answerer.annotate_body:
            node = answerer.serving(ctx)
            if node is not None:
                now = self.clock()
                if not self.versions.known(node, now)[0]:
                    left = ctx.start + self.total - now
                    ctx.stage = self.versions.ask(
                        node, max(0.001, left), lambda _answer: self._finish(ctx)
                    )
                    return
        self._finish(ctx)

    def _finish(self, ctx: RequestContext) -> None:
        """The answer step and the accounting; the response goes to the client."""
        reply = ctx.reply
        if reply is None:
            return
        ctx.reply = None
        ctx.stage = None
        try:
            response = self.answerer.build(ctx)
        except Exception:
            log.exception("unexpected error answering %s %s", ctx.req.method, ctx.req.path)
            response = internal_error()
        ctx.answer = response
        self.accounting.account(ctx, response)
        reply(response)

    def label(self, ctx: RequestContext) -> str:
        """The metric label of ``ctx``'s method (the client's, as asked)."""
        return self.stats.method_label(ctx.call)

    def label_of(self, method: str) -> str:
        return self.stats.label_of(method)
