"""The router: which node, how many tries. The only place that decides either.

Theory of operation
-------------------
A request arrives with a deadline (``timeouts.total``) and a budget of tries
(``1 + retries``). For each try the router

1. asks the fleet for the nodes that may serve now (fail-open when none may) and removes
   the ones this request already tried: a retry always goes to a different node;
2. lets the policy pick one of them (``race`` first pings them all and takes the first
   healthy answer, unless it remembers a recent winner);
3. sends the request through the transport with a timeout of ``min(per_try, time left)``;
4. judges the answer: a connection failure, a timeout, a 5xx or 429, a body that is not
   JSON, or a JSON-RPC error that means the node is unwell (a lock timeout, say) is the
   node's fault; anything else, client errors included, is the answer;
5. records the outcome on the node (latency, in flight, failures): passive health.

A node's fault leads to another try while tries and time remain, with one exception:
a broadcast (a transaction) is never sent twice. Once its bytes may have reached a node,
that node's answer, whatever it is, is the only one; it is re-sent only when the
connection failed before anything was written.

A read that has not answered after about its node's p95 latency is *hedged*: the same
request goes to a second node as well, the first good answer wins and the other try is
cancelled (which does not count against its node). Hedges and retries draw on one retry
budget (about 10% of the traffic), so a sick fleet sees at most that many extra requests
instead of a retry storm. A hedge the budget cannot pay for now is asked for again later
(twice the wait, then twice again) while its try is still out: tokens come back with the
traffic, and a try that hangs must not wait for its whole timeout because a burst of hedges
spent them a moment before. Hedges leave the budget's last tokens to retries.

The router raises nothing for upstream trouble: it returns an :class:`Outcome` that holds
either the answer or the error that ended the request, plus what was tried, and the
gateway turns that into a response.

Two doors, one logic: :meth:`Router.start` runs a request as a :class:`Forwarding`, a
small state machine driven by the transport's callbacks (the data plane: no task, future or
timer of its own per request; hedges are timed by one loop timer for all requests, see
:class:`.callbacks.DueQueue`), and :meth:`Router.forward` awaits the same machine. Only the rare
steps that must wait (the race's pings, a free slot under ``node_concurrency``, a new
connection) run as tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..callbacks import Cancellable, DueQueue, until_called
from ..config import HedgeConfig
from ..errors import (
    NoHealthyNode,
    RpcBalancerError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
)
from ..fleet.fleet import Fleet
from ..fleet.nodes import Node
from ..fleet.policies import BasePolicy, PickContext, Race
from ..health.chains import Chain
from ..health.probe import probe_headers, race
from ..jsonrpc import looks_like_json, response_errors
from ..upstream.pool import Transport, UpstreamResponse, running_loop, starter
from .budget import RetryBudget

log = logging.getLogger(__name__)


@dataclass(slots=True)  # built per request: frozen would cost a setattr call per field
class ProxyRequest:
    """A request to forward, as the router sees it."""

    method: str
    path: str | None
    headers: Mapping[str, str]
    body: bytes | None
    broadcast: bool = False
    client_ip: str = ""


@dataclass(slots=True)
class Outcome:
    """How a forwarded request ended."""

    response: UpstreamResponse | None = None
    error: RpcBalancerError | None = None
    node: Node | None = None
    tried: list[Node] = field(default_factory=list)
    hedged: bool = False

    @property
    def attempts(self) -> int:
        return len(self.tried)


def judge(resp: UpstreamResponse, chain: Chain) -> str | None:
    """Why a node's answer is the node's fault, or None when it is a proper answer."""
    if resp.status >= 500 or resp.status == 429:
        return f"answered HTTP {resp.status}"
    if resp.status >= 400:
        return None  # the client asked for something wrong; another node would agree
    errors = response_errors(resp.body)
    if errors is None:
        return "answered with a body that is not JSON"
    for error in errors:
        if chain.is_node_fault(error):
            return f"answered a node error: {error.get('message')}"
    return None


class Router:
    def __init__(
        self,
        fleet: Fleet,
        policy: BasePolicy,
        transport: Transport,
        chain: Chain,
        *,
        per_try: float,
        total: float,
        retries: int,
        clock: Callable[[], float] = time.monotonic,
        budget: RetryBudget | None = None,
        hedge: HedgeConfig | None = None,
        node_concurrency: int = 0,
        queue_size: int = 0,
        user_agent: str = "rpcbalancer",
    ) -> None:
        self.fleet = fleet
        self.ping_headers = probe_headers(user_agent)
        self.policy = policy
        self.transport = transport
        self.chain = chain
        self.per_try = per_try
        self.total = total
        self.retries = retries
        self.clock = clock
        self.budget = budget or RetryBudget(ratio=1.0, min_per_second=1e9, burst=1e9)
        self.hedge = hedge
        self.cap = node_concurrency
        self.queue_size = queue_size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.start_request = starter(transport)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hedges = DueQueue()

    def start(self, req: ProxyRequest, done: Callable[[Outcome], None]) -> Forwarding:
        """Forward ``req``; ``done(outcome)`` is called once (possibly before this returns)
        unless the returned forwarding is cancelled first."""
        forwarding = Forwarding(self, req, done)
        forwarding.step()
        return forwarding

    async def forward(self, req: ProxyRequest) -> Outcome:
        return await until_called(lambda done: self.start(req, done))

    def _hedge_delay(self, node: Node, req: ProxyRequest, choices: int) -> float | None:
        """How long to wait for ``node`` before asking a second one, or None for no hedge:
        never for a broadcast, never without a second node. A node with too few answers to
        know its quantile (one the strategy seldom picks) is hedged after three times its
        predicted latency; one never measured is not hedged."""
        hedge = self.hedge
        if hedge is None or not hedge.enabled or req.broadcast or choices < 2:
            return None
        now = self.clock()
        quantile = node.quantile(hedge.quantile, hedge.min_samples, now)
        if quantile is None:
            predicted = node.predicted(now)
            if predicted is None:
                return None
            quantile = 3.0 * predicted
        return min(hedge.max_delay, max(hedge.min_delay, quantile))

    def _another(self, req: ProxyRequest, outcome: Outcome, now: float) -> Node | None:
        candidates, failopen = self.fleet.candidates(now)
        left = [n for n in candidates if n not in outcome.tried]
        if not left or failopen:
            return None
        return self.policy.pick(left, PickContext(now=now, client_ip=req.client_ip))

    async def _race(self, nodes: Sequence[Node], deadline: float) -> Node | None:
        timeout = max(0.001, min(self.per_try, deadline - self.clock()))
        call = self.chain.probe_calls()[0]
        return await race(
            self.transport, nodes, call, timeout, self.clock, self.per_try, self.ping_headers
        )

    async def _wait_for_slot(self, deadline: float, waiter: asyncio.Future[None]) -> bool:
        """Wait in line (``waiter``, already in it) until a try ends somewhere; False when
        the deadline comes first."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _slot_freed(self) -> None:
        if self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _why_none(self) -> str:
        now = self.clock()
        best = self.fleet.best_head()
        reasons = [
            f"{n.name}: {self.fleet.exclusion(n, now, best) or 'tried'}" for n in self.fleet.nodes
        ]
        return "no node can serve this request (" + "; ".join(reasons) + ")"


class Forwarding:
    """One request through the router: tries, hedges and retries, driven by callbacks.

    :meth:`step` starts the next attempt (or ends the request); each try reports back to
    :meth:`_ended`; the hedge queue calls :meth:`due`. The request ends exactly once, in
    :meth:`_finish`, which hands the outcome to ``done``.
    """

    __slots__ = (
        "attempt",
        "deadline",
        "done",
        "due_token",
        "hedge_wait",
        "last_error",
        "last_node",
        "last_response",
        "outcome",
        "over",
        "req",
        "router",
        "tries",
        "waiting",
    )

    def __init__(self, router: Router, req: ProxyRequest, done: Callable[[Outcome], None]) -> None:
        start = router.clock()
        router.budget.deposit(start)
        self.router = router
        self.req = req
        self.done = done
        self.deadline = start + router.total
        self.outcome = Outcome()
        self.attempt = 0
        self.last_error: RpcBalancerError | None = None
        self.last_response: UpstreamResponse | None = None
        self.last_node: Node | None = None
        self.tries: list[Try] = []
        self.due_token = 0
        """Nonzero while this attempt's hedge is still to come: the token it was queued with
        in the hedge queue (which skips an entry whose token is no longer held)."""
        self.hedge_wait = 0.0
        """How long this attempt waited for its hedge so far (it doubles when the budget
        says not yet)."""
        self.waiting: asyncio.Task[None] | None = None
        self.over = False

    # -- attempts ------------------------------------------------------------------------

    def step(self) -> None:
        """Start the next attempt, or end the request when none may be made."""
        router = self.router
        outcome = self.outcome
        if self.attempt > router.retries:
            self._finish()
            return
        attempt = self.attempt
        self.attempt += 1
        now = router.clock()
        if now >= self.deadline:
            self.last_error = UpstreamTimeout(
                outcome.tried[-1].name if outcome.tried else "balancer",
                f"the {router.total:g}s deadline passed after {len(outcome.tried)} tries",
            )
            self._finish()
            return
        candidates, failopen = router.fleet.candidates(now)
        tried = outcome.tried
        left = [n for n in candidates if n not in tried] if tried else candidates
        if not left:
            self._finish()
            return
        if router.cap:
            free = [n for n in left if n.inflight < router.cap]
            if not free:  # every node is at its cap: wait for a slot, in line
                self.attempt = attempt  # the same attempt, once a slot is free
                self._wait_for_slot()
                return
            left = free
        if attempt and not router.budget.withdraw(now):
            self._finish()  # the retry budget is spent: no retry storm on a sick fleet
            return
        if failopen:
            self._launch(left[0], len(left))  # least bad first
            return
        policy = router.policy
        if isinstance(policy, Race):
            winner = policy.remembered(left, now)
            if winner is None:
                self._await(self._race(policy, left))
                return
            self._launch(winner, len(left))
            return
        self._launch(
            policy.pick(left, PickContext(now=now, client_ip=self.req.client_ip)), len(left)
        )

    def _launch(self, node: Node, choices: int) -> None:
        router = self.router
        self.outcome.tried.append(node)
        attempt = Try(self, node)
        self.tries.append(attempt)
        attempt.start()
        delay = router._hedge_delay(node, self.req, choices)
        if delay is not None and not self.over and self.tries:
            self.hedge_wait = delay
            self._hedge_in(delay)

    def _hedge_in(self, delay: float) -> None:
        router = self.router
        loop = router.loop = running_loop(router.loop)
        self.due_token = self.attempt
        router.hedges.add(loop, loop.time() + delay, self, self.attempt)

    def due(self, token: int) -> None:
        """The hedge queue: this attempt's first try has not answered in time."""
        if token != self.due_token or self.over or not self.tries:
            return
        self.due_token = 0
        router = self.router
        now = router.clock()
        second = router._another(self.req, self.outcome, now)
        if second is None:
            return
        budget = router.budget
        if not budget.withdraw(now, budget.reserve):
            # Not now: ask again after twice the wait, while the try may still be saved.
            wait = self.hedge_wait
            started = self.tries[0].started
            if now + wait < min(self.deadline, started + router.per_try):
                self.hedge_wait = 2 * wait
                self._hedge_in(wait)
            return
        self.outcome.tried.append(second)
        self.outcome.hedged = True
        hedge = Try(self, second)
        self.tries.append(hedge)
        hedge.start()

    def _ended(
        self, finished: Try, resp: UpstreamResponse | None, error: UpstreamError | None
    ) -> None:
        """A try is over: the answer wins; a failure waits for the other try of a hedge,
        else leads to the next attempt (a broadcast that may have arrived ends here)."""
        if self.over:
            return
        tries = self.tries
        tries.remove(finished)
        if error is None:
            for other in tries:
                other.cancel()  # the hedge's loser: its node is not blamed
            tries.clear()
            self.outcome.response, self.outcome.node = resp, finished.node
            self._finish(answered=True)
            return
        self.last_error, self.last_response, self.last_node = error, resp, finished.node
        if tries:
            return  # the other try of the hedge may still answer
        self.due_token = 0  # failed before the hedge was due: an ordinary retry follows
        if self.req.broadcast and (resp is not None or error.sent):
            # The node may have the transaction: its answer, whatever it is, is final.
            self.outcome.response, self.outcome.node = resp, finished.node
            self._finish()
            return
        self.step()

    # -- the slow steps ------------------------------------------------------------------

    def _await(self, step: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await step
            finally:
                self.waiting = None

        self.waiting = asyncio.get_running_loop().create_task(run())

    async def _race(self, policy: Race, nodes: list[Node]) -> None:
        router = self.router
        winner = await router._race(nodes, self.deadline)
        if self.over:
            return
        if winner is None:
            if router.clock() >= self.deadline:
                self.last_error = UpstreamTimeout(
                    "balancer",
                    f"no node answered the race ping within the {router.total:g}s deadline",
                )
            else:
                self.last_error = NoHealthyNode("no node answered the race ping in time")
            self._finish()
            return
        policy.remember(winner, router.clock())
        self._launch(winner, len(nodes))

    def _wait_for_slot(self) -> None:
        router = self.router
        if len(router._waiters) >= router.queue_size:
            self.last_error = NoHealthyNode(
                f"every node has {router.cap} requests in flight and "
                f"{len(router._waiters)} more are waiting: try again shortly"
            )
            self._finish()
            return

        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        router._waiters.append(waiter)  # in line now: the next request sees it

        async def wait() -> None:
            if not await router._wait_for_slot(self.deadline, waiter):
                self.last_error = UpstreamTimeout(
                    "balancer", f"no node had a free slot within the {router.total:g}s deadline"
                )
                self._finish()
            elif not self.over:
                self.step()

        self._await(wait())

    # -- the end -------------------------------------------------------------------------

    def _finish(self, *, answered: bool = False) -> None:
        """End the request: with the answer when ``answered``, else with the error that
        ended it (a broadcast keeps the answer of the node that may have it)."""
        if self.over:
            return
        self.over = True
        outcome = self.outcome
        if not answered and not (outcome.response is not None and self.req.broadcast):
            outcome.response = None
            outcome.error = self.last_error or NoHealthyNode(self.router._why_none())
        done = self.done
        self._release()
        try:
            done(outcome)
        except Exception:
            log.exception("unexpected error answering a forwarded request")

    def cancel(self) -> None:
        """Nobody waits for the answer any more: stop every try (their nodes are not blamed)."""
        if self.over:
            return
        self.over = True
        for t in self.tries:
            t.cancel()
        self.tries.clear()
        if self.waiting is not None:
            self.waiting.cancel()
        self._release()

    def _release(self) -> None:
        """Let go of the bodies: the hedge queue may hold this object until its hedge's
        time (up to ``hedge.max_delay``), long after the request ended."""
        self.done = _nothing
        self.due_token = 0
        self.req = _RELEASED
        self.outcome = _RELEASED_OUTCOME
        self.last_response = None


def _nothing(outcome: Outcome) -> None:
    pass


_RELEASED = ProxyRequest(method="GET", path=None, headers={}, body=None)
_RELEASED_OUTCOME = Outcome()  # never written: a request that is over changes nothing


class Try:
    """One try of a request on one node: started at once, judged when it ends."""

    __slots__ = ("exchange", "forwarding", "live", "load", "node", "started")

    def __init__(self, forwarding: Forwarding, node: Node) -> None:
        self.forwarding = forwarding
        self.node = node
        self.started = 0.0
        self.load = 1
        self.exchange: Cancellable | None = None
        self.live = True

    def start(self) -> None:
        forwarding = self.forwarding
        router = forwarding.router
        req = forwarding.req
        self.started = now = router.clock()
        timeout = max(0.001, min(router.per_try, forwarding.deadline - now))
        self.load = self.node.begin(now)
        exchange = router.start_request(
            self.node,
            req.method,
            req.path,
            req.headers,
            req.body,
            timeout,
            not req.broadcast,
            self.ended,
        )
        if self.live:  # (a transport may answer before returning)
            self.exchange = exchange

    def ended(self, resp: UpstreamResponse | None, exc: UpstreamError | None) -> None:
        """The transport's answer: judge it, record it on the node, report to the request."""
        forwarding = self.forwarding
        router = forwarding.router
        node = self.node
        self.exchange = None
        if not self.live:
            return
        self.live = False
        now = router.clock()
        if exc is not None or resp is None:
            error = exc or UpstreamError(node.name, "no answer")
            node.end(
                now,
                now - self.started,
                False,
                error=error.reason,
                penalty=router.per_try,
                health=router.fleet.health,
                load=self.load,
            )
            router._slot_freed()
            forwarding._ended(self, None, error)
            return
        fault = judge(resp, router.chain)
        node.end(
            now,
            now - self.started,
            fault is None,
            error=fault,
            penalty=router.per_try,
            health=router.fleet.health,
            load=self.load,
        )
        router._slot_freed()
        if fault is None:
            head = router.chain.head_in(resp.body)
            if head is not None:
                node.observe_head(now, head)  # freshness between probes
            forwarding._ended(self, resp, None)
            return
        poor = resp if forwarding.req.broadcast and looks_like_json(resp.body) else None
        forwarding._ended(self, poor, UpstreamBadResponse(node.name, fault, resp.status))

    def cancel(self) -> None:
        if not self.live:
            return
        self.live = False
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.cancel()
        self.node.cancel(self.started)  # abandoned by us, not failed by the node
        self.forwarding.router._slot_freed()
