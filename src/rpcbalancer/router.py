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
instead of a retry storm.

The router raises nothing for upstream trouble: it returns an :class:`Outcome` that holds
either the answer or the error that ended the request, plus what was tried, and the
gateway turns that into a response.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from .budget import RetryBudget
from .chains import Answer, Chain
from .config import HedgeConfig
from .errors import (
    NoHealthyNode,
    RpcBalancerError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
)
from .jsonrpc import looks_like_json, response_errors
from .nodes import Fleet, Node
from .policies import BasePolicy, PickContext, Race
from .probe import ask
from .upstream import Transport, UpstreamResponse


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


def ping_ok(answer: Answer) -> bool:
    """A race ping's verdict: a JSON answer that does not say the node is unwell."""
    if answer.error is not None or not 200 <= answer.status < 300:
        return False
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return False
    if isinstance(doc, dict):
        if "error" in doc:
            return False
        if "status" in doc and doc["status"] != "OK":
            return False
    return True


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
    ) -> None:
        self.fleet = fleet
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

    async def forward(self, req: ProxyRequest) -> Outcome:
        start = self.clock()
        deadline = start + self.total
        outcome = Outcome()
        self.budget.deposit(start)
        last_error: RpcBalancerError | None = None
        for attempt in range(1 + self.retries):
            now = self.clock()
            if now >= deadline:
                last_error = UpstreamTimeout(
                    outcome.tried[-1].name if outcome.tried else "balancer",
                    f"the {self.total:g}s deadline passed after {len(outcome.tried)} tries",
                )
                break
            candidates, failopen = self.fleet.candidates(now)
            left = [n for n in candidates if n not in outcome.tried]
            if not left:
                break
            if self.cap:
                free = [n for n in left if n.inflight < self.cap]
                while not free:  # every node is at its cap: wait for a slot, in line
                    if len(self._waiters) >= self.queue_size:
                        outcome.error = NoHealthyNode(
                            f"every node has {self.cap} requests in flight and "
                            f"{len(self._waiters)} more are waiting: try again shortly"
                        )
                        return outcome
                    if not await self._wait_for_slot(deadline):
                        outcome.error = UpstreamTimeout(
                            "balancer",
                            f"no node had a free slot within the {self.total:g}s deadline",
                        )
                        return outcome
                    free = [n for n in left if n.inflight < self.cap]
                left = free
            if attempt and not self.budget.withdraw(now):
                break  # the retry budget is spent: no retry storm on a sick fleet
            node = await self._choose(left, req, now, deadline, failopen)
            if node is None:
                if self.clock() >= deadline:
                    last_error = UpstreamTimeout(
                        "balancer",
                        f"no node answered the race ping within the {self.total:g}s deadline",
                    )
                else:
                    last_error = NoHealthyNode("no node answered the race ping in time")
                break
            outcome.tried.append(node)
            delay = self._hedge_delay(node, req, len(left))
            if delay is None:
                resp, error = await self._try(node, req, deadline)
            else:
                resp, error, node = await self._hedged(node, req, deadline, delay, outcome)
            if error is None:
                outcome.response, outcome.node = resp, node
                return outcome
            last_error = error
            if req.broadcast and (resp is not None or error.sent):
                # The node may have the transaction: its answer, whatever it is, is final.
                outcome.response, outcome.node = resp, node
                break
        if outcome.response is not None and req.broadcast:
            return outcome
        outcome.response = None
        outcome.error = last_error or NoHealthyNode(self._why_none())
        return outcome

    def _hedge_delay(self, node: Node, req: ProxyRequest, choices: int) -> float | None:
        """How long to wait for ``node`` before asking a second one, or None for no hedge:
        never for a broadcast, never without a second node, never before the node's
        latency is known well enough to time it."""
        hedge = self.hedge
        if hedge is None or not hedge.enabled or req.broadcast or choices < 2:
            return None
        quantile = node.quantile(hedge.quantile, hedge.min_samples)
        if quantile is None:
            return None
        return min(hedge.max_delay, max(hedge.min_delay, quantile))

    async def _hedged(
        self, first: Node, req: ProxyRequest, deadline: float, delay: float, outcome: Outcome
    ) -> tuple[UpstreamResponse | None, UpstreamError | None, Node]:
        """Try ``first``; if it has not answered after ``delay``, try a second node too (when
        the budget allows). The first good answer wins and the other try is cancelled.

        Every read pays for this on the hot path, so it waits on one plain future woken by
        the tries' completion callbacks or by the hedge timer, not on ``asyncio.wait``."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()

        def poke(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        tries = {loop.create_task(self._try(first, req, deadline)): first}
        for task in tries:
            task.add_done_callback(poke)
        timer: asyncio.TimerHandle | None = loop.call_later(delay, poke)
        last: tuple[UpstreamResponse | None, UpstreamError | None, Node] = (None, None, first)
        try:
            while tries:
                await wake
                wake = loop.create_future()
                done = [task for task in tries if task.done()]
                for task in done:
                    node = tries.pop(task)
                    resp, error = task.result()
                    if error is None:
                        return resp, None, node
                    last = (resp, error, node)
                if done and timer is not None:
                    break  # it failed before the hedge was due: an ordinary retry follows
                if not done and timer is not None:  # the first is slow: hedge
                    timer = None
                    now = self.clock()
                    second = self._another(req, outcome, now)
                    if second is not None and self.budget.withdraw(now):
                        outcome.tried.append(second)
                        outcome.hedged = True
                        task = loop.create_task(self._try(second, req, deadline))
                        task.add_done_callback(poke)
                        tries[task] = second
                for task in tries:  # a fresh future: re-arm the pending tries
                    if task.done():
                        poke()
            return last
        finally:
            if timer is not None:
                timer.cancel()
            for task in tries:
                task.cancel()  # the loser: its node is not blamed (see Node.cancel)

    def _another(self, req: ProxyRequest, outcome: Outcome, now: float) -> Node | None:
        candidates, failopen = self.fleet.candidates(now)
        left = [n for n in candidates if n not in outcome.tried]
        if not left or failopen:
            return None
        return self.policy.pick(left, PickContext(now=now, client_ip=req.client_ip))

    async def _try(
        self, node: Node, req: ProxyRequest, deadline: float
    ) -> tuple[UpstreamResponse | None, UpstreamError | None]:
        """One try: the answer and no error, or the error (with the node's answer when it
        gave one that a broadcast must not hide)."""
        timeout = max(0.001, min(self.per_try, deadline - self.clock()))
        health = self.fleet.health
        started = self.clock()
        node.begin()
        try:
            resp = await self.transport.send(
                node,
                req.method,
                req.path,
                req.headers,
                req.body,
                timeout,
                idempotent=not req.broadcast,
            )
        except UpstreamError as exc:
            now = self.clock()
            node.end(
                now, now - started, False, error=exc.reason, penalty=self.per_try, health=health
            )
            return None, exc
        except BaseException:
            node.cancel()  # abandoned by us, not failed by the node
            raise
        finally:
            if self._waiters:
                self._wake_one()
        finished = self.clock()
        fault = judge(resp, self.chain)
        node.end(
            finished,
            finished - started,
            fault is None,
            error=fault,
            penalty=self.per_try,
            health=health,
        )
        if fault is None:
            head = self.chain.head_in(resp.body)
            if head is not None:
                node.observe_head(finished, head)  # freshness between probes
            return resp, None
        poor = resp if req.broadcast and looks_like_json(resp.body) else None
        return poor, UpstreamBadResponse(node.name, fault, resp.status)

    async def _choose(
        self,
        nodes: Sequence[Node],
        req: ProxyRequest,
        now: float,
        deadline: float,
        failopen: bool,
    ) -> Node | None:
        if failopen:
            return nodes[0]  # least bad first
        policy = self.policy
        if isinstance(policy, Race):
            winner = policy.remembered(nodes, now)
            if winner is None:
                winner = await self._race(nodes, deadline)
                if winner is not None:
                    policy.remember(winner, self.clock())
            return winner
        return policy.pick(nodes, PickContext(now=now, client_ip=req.client_ip))

    async def _race(self, nodes: Sequence[Node], deadline: float) -> Node | None:
        """Ping every node at once; the first healthy answer wins, the rest are cancelled."""
        call = self.chain.probe_calls()[0]
        timeout = max(0.001, min(self.per_try, deadline - self.clock()))

        async def ping(node: Node) -> Node | None:
            answer = await ask(self.transport, node, call, timeout, self.clock)
            if answer.error is not None:
                node.record(
                    self.clock(), answer.latency, False, error=answer.error, penalty=self.per_try
                )
                return None
            node.observe_latency(self.clock(), answer.latency)
            return node if ping_ok(answer) else None

        tasks = [asyncio.create_task(ping(n)) for n in nodes]
        try:
            for next_done in asyncio.as_completed(tasks):
                winner = await next_done
                if winner is not None:
                    return winner
            return None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _wait_for_slot(self, deadline: float) -> bool:
        """Wait in line until a try ends somewhere; False when the deadline comes first."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

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
