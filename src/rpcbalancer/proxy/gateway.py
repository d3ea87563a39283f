"""The gateway: HTTP request in, HTTP response out, the same way for every call and every host.

Theory of operation
-------------------
Every proxied request takes one way, each step in its own module, each entered once, on the
way down to the node or on the way back:

1. **admission** (:mod:`.admission`): who asks what, and may they. It makes the request's
   :class:`~.context.RequestContext`, which every later step reads and writes; a request
   refused here carries its answer already.
2. **plan** (:mod:`.plan`): the call's route, group, TTL, cache key and what is sent (a
   dictionary hit for a method planned before). A balancer with one group and no routes is
   the one-group case of the same way.
3. **cache** (:mod:`.lookup`): a read with a TTL answered from this process's cache at once,
   or from Redis after a round trip.
4. **coalesce** (:mod:`.coalesce`): a miss follows an identical read in flight, or leads.
5. **route** (:mod:`.forward`, then :mod:`.router` and :mod:`.forwarding`): the call's
   request goes to its group's router, which picks a node and forwards, with hedges and
   retries.
6. **answer** (:mod:`.answer`): the response, written back at once (a head behind one the
   group reported before is held first: :mod:`.heads`);
7. **account** (:mod:`.accounting`) and **learn** (:mod:`.learn`): the request counted and
   logged; what the answer teaches (the chain's head and last irreversible block; the answer
   itself, for the cache). Only the requests to come need these: they run once the client
   has its answer, before the next request is read.

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
from collections.abc import Awaitable

from ..balancer import Balancer
from ..callbacks import Cancellable, until_called
from ..config import ApiKey
from ..health.chains.base import AGAIN
from ..jsonrpc import dumps, loads, null_answer, result_answer
from ..messages import HttpRequest, HttpResponse, Reply, error_response, internal_error
from ..observe import doctorlai
from .accounting import Accounting
from .admission import Admission
from .answer import Answerer, reply_with, safe_path
from .batch import Batch
from .coalesce import Coalescer
from .context import RequestContext
from .control import Control, preflight
from .forward import Forward
from .forwarding import Outcome
from .heads import WAITS, HeadFloor
from .learn import Learner
from .lookup import ASK_REDIS, HIT, Lookup
from .plan import Plan, Planner
from .quorum import Quorum
from .sharedheads import SharedHeads
from .split import Split, chunks_of
from .writes import RecentWrites

log = logging.getLogger(__name__)

__all__ = ["Gateway", "HttpRequest", "HttpResponse", "Reply"]


class Gateway:
    def __init__(self, balancer: Balancer, *, annotate: str | None = None) -> None:
        self.balancer = balancer
        config = balancer.config
        clock = balancer.clock
        self.shared_limiter = balancer.shared_limiter
        total = balancer.router.total
        self.control = Control(balancer)
        self.admission = Admission(
            config,
            balancer.request_ids,
            balancer.trusted_proxies,
            balancer.methods,
            balancer.keys,
            balancer.limiter,
            clock,
            total,
        )
        self.planner: Planner = balancer.planner
        cache = balancer.answer_cache
        self.lookup = Lookup(cache, clock)
        self.forward = Forward(config.user_agent, config.broadcast.fanout)
        self.coalescer = Coalescer(self, self.forward, clock, total) if balancer.coalesce else None
        self.learner = Learner(cache, balancer.chain, clock)
        self.total = total
        self.stats = balancer.stats
        self.pause = min(0.5, max(0.05, balancer.chain.block_interval / 6))
        """Seconds before a block clients were told exists is asked for again."""
        self.doctorlai = config.compat == "doctorlai"
        """``GET /`` answered as DoctorLai/steem-load-balancer answers it."""
        self.shared_heads = balancer.shared_heads
        """The floors of every process sharing the cache's Redis (:mod:`.sharedheads`)."""
        self.writes = balancer.writes
        """Clients that broadcast lately: their reads must see it (:mod:`.writes`)."""
        self.answerer = Answerer(
            annotate or config.annotate,
            config.explain,
            balancer.versions,
            clock,
            balancer.fleet,
            balancer.router.policy,
            {node.name: node for node in balancer.fleet.nodes},
            total,
            self._resume,
        )
        self.accounting = Accounting(
            balancer.stats,
            balancer.access_log,
            balancer.keys,
            clock,
            balancer.rng,
            cache is not None,
        )

    def __repr__(self) -> str:
        return f"<Gateway {self.planner!r} {self.lookup!r}>"

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
            self.answer(ctx)
            return
        call = ctx.call
        if call is None:  # GET /, or a forwarded path: the default group's, never cached
            plan = self.planner.bare
            ctx.plan = plan
            ctx.groups = plan.shape.groups
            ctx.stage = self.forward.call(ctx, plan, ctx.forwarded)
            return
        if not call.methods:  # every batch member was answered at admission
            ctx.body = b"[]"  # (the answer step adds the refused members' answers)
            self.answer(ctx)
            return
        writes = self.writes
        if writes is not None and writes.writes:
            ctx.wrote = writes.of(Admission.client_of(ctx), ctx.start)
        if call.batch:
            ctx.stage = Batch(self, ctx).start()
            return
        plan = self.planner.plan(call.members[0])
        ctx.plan = plan
        ctx.groups = plan.shape.groups
        if ctx.wrote is not None and not plan.shape.follows_writes:
            ctx.wrote = None  # it cannot see the client's broadcast: routed as anyone's
        if plan.shape.limit:  # a heavy call: within the limit, or refused here
            refused = self.planner.refusal(plan)
            if refused is not None:
                self.stats.heavy_refused += 1
                ctx.answer = error_response("invalid_params", refused, call)
                self.answer(ctx)
                return
        size = plan.shape.split
        if size:  # a log query too wide for one call: in chunks across nodes
            span = self.planner.span(plan)
            if span is not None and span[1] - span[0] + 1 > size:
                query = dict(plan.params[0])
                chunks = chunks_of(span[0], span[1], size)
                ctx.stage = Split(self, ctx, plan, query, chunks).start()
                return
        found = self.lookup.find(ctx, plan)
        if found == HIT:
            self.answer(ctx)
        elif found == ASK_REDIS:
            ctx.stage = asyncio.get_running_loop().create_task(self._via_redis(ctx, plan))
        else:
            self._onward(ctx, plan)

    async def _via_redis(self, ctx: RequestContext, plan: Plan) -> None:
        """The cache step's second tier: Redis, then on the way as a miss."""
        hit = await self.lookup.in_redis(ctx, plan)
        if ctx.reply is None:
            return
        if hit:
            self.answer(ctx)
        else:
            self._onward(ctx, plan)

    def _onward(self, ctx: RequestContext, plan: Plan) -> None:
        """Coalesce, then route."""
        quorum = plan.shape.route.quorum
        if quorum is not None and not plan.broadcast:  # several nodes, enough must agree
            ask, agree = quorum
            ctx.stage = Quorum(self, ctx, plan, agree, self.balancer.mark).start(ask)
            return
        coalescer = self.coalescer
        if coalescer is not None and not plan.broadcast and ctx.wrote is None:
            ctx.stage = coalescer.join(ctx, plan)
        else:
            ctx.stage = self.forward.call(ctx, plan, ctx.forwarded)

    # -- the way back ----------------------------------------------------------------------

    def learned(self, ctx: RequestContext, outcome: Outcome) -> None:
        """A single call's forwarding ended: answer, then learn from it (the client waits for
        the one; the other concerns the requests to come, and is done before the next one is
        read). It learns whether the client is still there or not."""
        plan = ctx.plan
        if plan is not None and self.not_there_yet(ctx, plan, outcome):
            self._ask_again(ctx, plan)  # a block clients were told exists: never null
            return
        if plan is not None and outcome.resent and plan.shape.resend == AGAIN:
            resp = outcome.response
            taken = None
            if resp is not None and not outcome.duplicate and b'"error"' in resp.body:
                taken = self.balancer.chain.taken(resp.body, plan.params)
            if taken is not None:  # "its nonce is used": by this very transaction?
                self._look_up(ctx, outcome, taken)
                return
        ctx.outcome = outcome
        self.answer(ctx)
        if plan is not None and ctx.call is not None:
            self.learner.learn(plan, outcome)
            writes = self.writes
            if plan.broadcast and writes is not None:
                self._wrote(ctx, writes, outcome)

    def _look_up(self, ctx: RequestContext, outcome: Outcome, taken: str) -> None:
        """A transaction sent again, which a node says it cannot take because its nonce is
        used: when the chain has this very transaction (by its hash), that is the success
        the node that died would have answered; else the node's answer stands."""
        member = {"jsonrpc": "2.0", "method": "eth_getTransactionByHash", "params": [taken]}
        plan = self.planner.plan({**member, "id": 1})

        def found(lookup: Outcome) -> None:
            resp = lookup.response
            if resp is not None and resp.status == 200 and taken.encode() in resp.body:
                call = ctx.call
                ident = call.first_id if call is not None else None
                ctx.body = result_answer(b'"%s"' % taken.encode(), ident)
                ctx.status = 200
                outcome.duplicate = True
                node, writes = lookup.node, self.writes
                if node is not None:
                    ctx.nodes = (node.name,)
                    if writes is not None:  # read-your-writes: that node has it
                        writes.wrote(Admission.client_of(ctx), node, ctx.body)
            ctx.outcome = outcome
            self.answer(ctx)

        ctx.stage = self.forward.call(ctx, plan, found, body=dumps({**member, "id": 1}))

    def not_there_yet(self, ctx: RequestContext, plan: Plan, outcome: Outcome) -> bool:
        """Whether ``outcome`` is a ``null`` for a block this group told clients exists, and
        the read may ask again (its deadline, and :data:`.heads.WAITS`, allowing)."""
        resp = outcome.response
        heads = plan.group.heads
        if resp is None or heads is None or resp.status != 200 or ctx.waited >= WAITS:
            return False
        if not null_answer(resp.body) or not heads.told(plan.parts[-1], plan.params):
            return False
        deadline = ctx.deadline or ctx.start + self.total
        return self.balancer.clock() + self.pause < deadline

    def _ask_again(self, ctx: RequestContext, plan: Plan) -> None:
        """Ask again after a fraction of a block (the stage is the timer, then the try)."""
        ctx.waited += 1
        loop = asyncio.get_running_loop()

        def again() -> None:
            if ctx.reply is not None:
                ctx.stage = self.forward.call(ctx, plan, ctx.forwarded)

        ctx.stage = loop.call_later(self.pause, again)

    @staticmethod
    def _wrote(ctx: RequestContext, writes: RecentWrites, outcome: Outcome) -> None:
        """A single broadcast ended: when a node accepted it, the client's reads follow it."""
        resp, node = outcome.response, outcome.node
        if resp is None or node is None or resp.status != 200 or b'"error"' in resp.body:
            return
        writes.wrote(Admission.client_of(ctx), node, resp.body)

    def answer(self, ctx: RequestContext, wait: bool = True) -> None:
        """The answer step and the accounting; the response goes to the client (unless it
        went away, or the answer waits for its node's version: ``wait``)."""
        reply = ctx.reply
        if reply is None:
            return
        plan = ctx.plan
        if self.doctorlai and ctx.call is None and ctx.path is None and ctx.answer is None:
            ctx.answer = index_page(self.balancer, ctx)  # (its monitoring reads GET /)
        if wait and plan is not None and plan.shape.reports_head and ctx.answer is None:
            heads = plan.group.heads
            if heads is not None:  # the head told never goes back (:mod:`.heads`)
                hold(ctx, heads, plan.key)
                shared = self.shared_heads
                if shared is not None and not ctx.settled and shared.usable():
                    ctx.settled = True  # ... in any process that shares Redis
                    loop = asyncio.get_running_loop()
                    ctx.stage = loop.create_task(self._settle(ctx, plan, heads, shared))
                    return
        try:
            response = self.answerer.build(ctx, wait)
        except Exception:
            log.exception("unexpected error answering %s %s", ctx.req.method, ctx.req.path)
            response = internal_error()
            response.headers.append(("x-request-id", ctx.rid))
        if response is None:
            return  # the node's version is being asked; :meth:`_resume` goes on
        ctx.reply = None
        ctx.stage = None
        ctx.answer = response
        reply(response)
        self.accounting.account(ctx, response)  # once the client has its answer

    def _resume(self, ctx: RequestContext) -> None:
        self.answer(ctx, wait=False)

    async def _settle(
        self, ctx: RequestContext, plan: Plan, heads: HeadFloor, shared: SharedHeads
    ) -> None:
        """The head with the other processes' (:mod:`.sharedheads`), then the answer."""
        await shared.settle(plan.group.name, plan.key, heads)
        if ctx.reply is not None:
            self.answer(ctx)


def index_page(balancer: Balancer, ctx: RequestContext) -> HttpResponse | None:
    """DoctorLai's ``GET /`` (:mod:`..observe.doctorlai`): the node's page with the fields
    and headers its monitoring reads; None when no node answered (the failure stands)."""
    outcome = ctx.outcome
    resp = outcome.response if outcome is not None else None
    node = outcome.node if outcome is not None else None
    if resp is None or node is None:
        return None
    try:
        upstream = loads(resp.body)
    except ValueError:
        upstream = {"raw": resp.body.decode(errors="replace")[:4096]}
        upstream["warning"] = "Upstream did not return JSON"
    doc = doctorlai.index_doc(balancer, upstream, resp.status, node, ctx.ip)
    headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("access-control-allow-origin", "*"),
        ("ip", ctx.ip),
        ("server", node.url),
        ("version", dumps(doc["__version__"]).decode()),
        ("loadbalancerversion", doctorlai.label(balancer)),
        ("x-rpc-node", node.name),
    ]
    return HttpResponse(resp.status, headers, dumps(doc))


def hold(ctx: RequestContext, heads: HeadFloor, key: str) -> None:
    """A single answer that reports the head: when it is behind the highest head its group
    reported, the answer that reported that one goes in its place, with the client's id."""
    body = ctx.body
    if body is None:
        outcome = ctx.outcome
        if outcome is None:
            return
        resp, node = outcome.response, outcome.node
        if resp is None or node is None or resp.status != 200:
            return
        body, name = resp.body, node.name
    elif ctx.status != 200:
        return
    else:
        name = ctx.nodes[0] if ctx.nodes else ""
    kept = heads.behind(key, body, name)
    if kept is not None:
        call = ctx.call
        ctx.body = result_answer(kept.result, call.first_id if call is not None else None)
        ctx.status = 200
        ctx.nodes = (kept.node,)
