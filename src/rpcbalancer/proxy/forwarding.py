"""One forwarded request as a state machine: :class:`Forwarding` (its tries, hedges and
retries) and :class:`Try` (one try on one node). The :class:`~.router.Router` starts them and
holds what every request shares (see its module for the theory of operation); here a
forwarding sees the router through :class:`~.request.Routing`, the parts it uses. Every change of
state goes through the one table of what may follow what, in :mod:`.states`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..callbacks import Cancellable, running_loop
from ..errors import (
    NoHealthyNode,
    RpcBalancerError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
)
from ..failsafe.hedge import hedge_delay
from ..fleet.fleet import reached
from ..fleet.nodes import Node
from ..fleet.policies import PickContext, Race
from ..health.chains import Chain
from ..health.chains.base import CONFIRMED
from ..jsonrpc import looks_like_json, null_answer, response_errors
from ..upstream.pool import UpstreamResponse
from .request import ProxyRequest, Routing
from .states import (
    CANCEL,
    DONE,
    END,
    EVENTS,
    HEDGE,
    ONE_LEFT,
    PICKING,
    QUEUE,
    QUEUED,
    RACE,
    RACING,
    RETRY,
    STATES,
    TRANSITIONS,
    TRY,
    TRYING,
    TURN,
    BadTransition,
)

log = logging.getLogger(__name__)


class Outcome:
    """How a forwarded request ended."""

    __slots__ = ("duplicate", "error", "hedged", "node", "resent", "response", "tried")

    def __init__(
        self,
        response: UpstreamResponse | None = None,
        error: RpcBalancerError | None = None,
        node: Node | None = None,
        tried: list[Node] | None = None,
        hedged: bool = False,
    ) -> None:
        self.response = response
        self.error = error
        self.node = node
        self.tried: list[Node] = [] if tried is None else tried
        self.hedged = hedged
        self.resent = False
        """A broadcast sent again after its node failed it (or sent to several at once)."""
        self.duplicate = False
        """Its answer is a node's "already have it", taken as the success it stands for."""

    def __repr__(self) -> str:
        node = self.node.name if self.node is not None else None
        status = self.response.status if self.response is not None else None
        return f"<Outcome {status} from {node} error={self.error!r} tried={len(self.tried)}>"

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


def start(router: Routing, req: ProxyRequest, done: Callable[[Outcome], None]) -> Forwarding:
    """A new forwarding of ``req``, its first step taken (``done`` may be called before this
    returns)."""
    forwarding = Forwarding(router, req, done)
    forwarding.step()
    return forwarding


class Forwarding:
    """One request through the router: tries, hedges and retries, driven by callbacks.

    :meth:`step` starts the next try (or ends the request); each try reports back to
    :meth:`ended`; the hedge queue calls :meth:`due`. The request ends exactly once, in
    :meth:`finish`, which hands the outcome to ``done``.
    """

    __slots__ = (
        "attempts",
        "deadline",
        "done",
        "due_token",
        "empty",
        "hedge_wait",
        "last_error",
        "outcome",
        "req",
        "router",
        "state",
        "tries",
        "waiting",
    )

    def __init__(self, router: Routing, req: ProxyRequest, done: Callable[[Outcome], None]) -> None:
        start = router.clock()
        router.budget.deposit(start)
        self.router = router
        self.req = req
        self.done = done
        self.deadline = start + router.total
        if req.deadline is not None and req.deadline < self.deadline:
            self.deadline = req.deadline
        self.outcome = Outcome()
        self.state = PICKING
        self.attempts = 0
        """Attempts started: the first try, then each retry (a hedge is not one)."""
        self.last_error: RpcBalancerError | None = None
        self.tries: list[Try] = []
        self.due_token = 0
        """Nonzero while this attempt's hedge is still to come: the token it was queued with
        in the hedge queue (which skips an entry whose token is no longer held)."""
        self.hedge_wait = 0.0
        """How long this attempt waited for its hedge so far (it doubles when the budget
        says not yet)."""
        self.waiting: asyncio.Task[None] | None = None
        self.empty: tuple[UpstreamResponse, Node] | None = None
        """A ``null`` answer kept while other nodes are asked (``unsure_of``)."""

    def __repr__(self) -> str:
        return f"<Forwarding {self.state_name} attempts={self.attempts} tried={self.outcome.tried}>"

    @property
    def state_name(self) -> str:
        return STATES[self.state]

    @property
    def over(self) -> bool:
        return self.state >= DONE

    def _to(self, event: int) -> None:
        """Move on by the table."""
        following = TRANSITIONS[self.state].get(event)
        if following is None:
            raise BadTransition(f"forwarding: {EVENTS[event]} while {STATES[self.state]}")
        self.state = following

    # -- tries ---------------------------------------------------------------------------

    def step(self) -> None:
        """Start the next attempt, or end the request when none may be made (in PICKING)."""
        router = self.router
        outcome = self.outcome
        retries = self.req.retries
        if self.attempts > (router.retries if retries is None else retries):
            self.finish()
            return
        now = router.clock()
        if now >= self.deadline:
            self.last_error = UpstreamTimeout(
                outcome.tried[-1].name if outcome.tried else "balancer",
                f"the {router.total:g}s deadline passed after {len(outcome.tried)} tries",
            )
            self.finish()
            return
        candidates, failopen = router.fleet.candidates(now)
        tried = outcome.tried
        left = [n for n in candidates if n not in tried] if tried else candidates
        req = self.req
        avoid = req.avoid
        if avoid:
            fresh = [n for n in left if n not in avoid]
            left = fresh or left
        if not left:
            self.finish()
            return
        choices = len(left)  # (a request sent to one of them may be hedged to another)
        prefer = req.prefer
        if prefer is not None and not failopen and prefer in left and prefer.answering(now):
            left = [prefer]  # read-your-writes: it has the client's writes in its state
        elif req.min_head and not failopen:
            left = reached(left, req.min_head)
            choices = len(left)
        cap = router.slots.cap
        if cap:
            free = [n for n in left if n.inflight < cap]
            if not free:  # every node is at its cap: wait for a slot, in line
                self._queue()
                return
            choices -= len(left) - len(free)
            left = free
        if self.attempts and not router.budget.withdraw(now):
            self.finish()  # the retry budget is spent: no retry storm on a sick fleet
            return
        self.attempts += 1
        if failopen:
            self._launch(left[0], choices, now)  # least bad first
            return
        policy = router.policy
        if isinstance(policy, Race):
            winner = policy.remembered(left, now)
            if winner is None:
                self._to(RACE)
                self._await(self._race(policy, left))
                return
            self._launch(winner, choices, now)
            return
        node = policy.pick(left, PickContext(now, req.client_ip))
        self._launch(node, choices, now)

    def _launch(self, node: Node, choices: int, now: float) -> None:
        self._to(TRY)
        attempt = self.attempts
        self._try(node)
        if self.state != TRYING or self.attempts != attempt:
            return  # answered at once (or failed at once, and a retry is out)
        router = self.router
        if self.req.fanout > 1 and attempt == 1:
            # A transaction the chain refuses twice goes to a second node at once.
            second = router.another(self.req, self.outcome.tried, now)
            if second is not None:
                self._to(HEDGE)
                self.outcome.resent = True
                self._try(second)
            return
        delay = hedge_delay(router.hedge, node, now, self.req.idempotent, choices)
        if delay is not None:
            self.hedge_wait = delay
            self._hedge_in(delay)

    def _try(self, node: Node) -> None:
        self.outcome.tried.append(node)
        attempt = Try(self, node)
        self.tries.append(attempt)
        attempt.start()

    def _hedge_in(self, delay: float) -> None:
        router = self.router
        loop = router.loop = running_loop(router.loop)
        self.due_token = self.attempts
        router.hedges.add(loop, loop.time() + delay, self, self.attempts)

    def due(self, token: int) -> None:
        """The hedge queue: this attempt's first try has not answered in time."""
        if token != self.due_token or self.state != TRYING:
            return
        self.due_token = 0
        router = self.router
        now = router.clock()
        second = router.another(self.req, self.outcome.tried, now)
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
        self._to(HEDGE)
        self.outcome.hedged = True
        self._try(second)

    def ended(
        self, finished: Try, resp: UpstreamResponse | None, error: UpstreamError | None
    ) -> None:
        """A try is over: the answer wins; a failure waits for the other try of a hedge,
        else leads to the next attempt (a broadcast that may have arrived ends here)."""
        if self.state >= DONE:
            return
        tries = self.tries
        tries.remove(finished)
        outcome = self.outcome
        if error is None:
            for other in tries:
                other.cancel(lost=True)  # the hedge's loser: charged the time it took
            tries.clear()
            outcome.response, outcome.node = resp, finished.node
            self.finish(answered=True)
            return
        self.last_error = error
        if tries:
            self._to(ONE_LEFT)  # the other try of the hedge may still answer
            return
        self.due_token = 0  # failed before the hedge was due: an ordinary retry follows
        if not self.req.idempotent and (resp is not None or error.sent):
            outcome.response, outcome.node = resp, finished.node
            if not self.req.resend:
                # The node may have the transaction: its answer, whatever it is, is final.
                self.finish()
                return
            # Its fate is unknown, and the chain refuses a transaction it has: another node
            # is asked (the answer above stands if none can be).
            outcome.resent = True
        self._to(RETRY)
        self.step()

    def ended_duplicate(self, finished: Try, resp: UpstreamResponse, success: bytes) -> None:
        """A broadcast sent again (or to several nodes) was answered "already have it":
        the success it stands for (``success``) wins; a synchronous broadcast's (``b""``)
        waits for its other try, which may confirm it, and else stands as the answer."""
        if self.state >= DONE:
            return
        self.tries.remove(finished)
        outcome = self.outcome
        if success:
            for other in self.tries:
                other.cancel()
            self.tries.clear()
            outcome.response = UpstreamResponse(200, resp.headers, success)
            outcome.node = finished.node
            outcome.duplicate = True
            self.finish(answered=True)
            return
        if outcome.response is None:
            outcome.response, outcome.node = resp, finished.node
        if self.tries:
            self._to(ONE_LEFT)
            return
        outcome.response, outcome.node = resp, finished.node
        self.finish()

    def ended_empty(self, finished: Try, resp: UpstreamResponse) -> None:
        """A try answered ``null`` where another node may know better: keep the answer,
        wait for the other try of a hedge, else ask another node (the answer stands when
        no node, try, time or budget is left)."""
        if self.state >= DONE:
            return
        self.tries.remove(finished)
        if self.empty is None:
            self.empty = (resp, finished.node)
        if self.tries:
            self._to(ONE_LEFT)
            return
        self.due_token = 0
        self._to(RETRY)
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
        winner = await router.ping_race(nodes, self.deadline)
        if self.state != RACING:
            return
        if winner is None:
            if router.clock() >= self.deadline:
                self.last_error = UpstreamTimeout(
                    "balancer",
                    f"no node answered the race ping within the {router.total:g}s deadline",
                )
            else:
                self.last_error = NoHealthyNode("no node answered the race ping in time")
            self.finish()
            return
        now = router.clock()
        policy.remember(winner, now)
        self._launch(winner, len(nodes), now)

    def _queue(self) -> None:
        slots = self.router.slots
        if slots.full():
            self.last_error = NoHealthyNode(
                f"every node has {slots.cap} requests in flight and "
                f"{len(slots)} more are waiting: try again shortly"
            )
            self.finish()
            return
        self._to(QUEUE)
        waiter = slots.join()  # in line now: the next request sees it

        async def wait() -> None:
            if not await slots.wait(waiter, self.deadline):
                self.last_error = UpstreamTimeout(
                    "balancer",
                    f"no node had a free slot within the {self.router.total:g}s deadline",
                )
                self.finish()
            elif self.state == QUEUED:
                self._to(TURN)
                self.step()

        self._await(wait())

    # -- the end -------------------------------------------------------------------------

    def finish(self, *, answered: bool = False) -> None:
        """End the request: with the answer when ``answered``, else with the error that
        ended it (a broadcast keeps the answer of the node that may have it)."""
        if self.state >= DONE:
            return
        self._to(END)
        outcome = self.outcome
        if not answered and self.empty is not None:
            # Every node asked said null (or none is left to ask): that is the answer.
            outcome.response, outcome.node = self.empty
            outcome.error = None
            answered = True
        if not answered and not (outcome.response is not None and not self.req.idempotent):
            outcome.response = None
            outcome.error = self.last_error or NoHealthyNode(self.router.why_none())
        done = self.done
        self._release()
        try:
            done(outcome)
        except Exception:
            log.exception("unexpected error answering a forwarded request")

    def cancel(self) -> None:
        """Nobody waits for the answer any more: stop every try (their nodes are not charged)."""
        if self.state >= DONE:
            return
        self._to(CANCEL)
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
        self.started = now = router.clock()
        per_try = forwarding.req.per_try
        if per_try is None:
            per_try = router.per_try
        elif per_try == 0:
            per_try = forwarding.deadline - now
        timeout = max(0.001, min(per_try, forwarding.deadline - now))
        self.load = self.node.begin(now)
        exchange = router.start_request(self.node.address, forwarding.req, timeout, self.ended)
        if self.live:  # (a transport may answer before returning)
            self.exchange = exchange

    def ended(self, resp: UpstreamResponse | None, exc: UpstreamError | None) -> None:
        """The transport's answer: judge it, report to the request, record it on the node.
        A proper answer goes on to the client before the node's estimates learn from it:
        the client waits for the one, nobody for the other (and nothing picks a node in
        between: the answer is written before the next request is read)."""
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
            self._record(now, error.reason)
            forwarding.ended(self, None, error)
            return
        fault = judge(resp, router.chain)
        if fault is not None:
            self._record(now, fault)
            poor = resp if not forwarding.req.idempotent and looks_like_json(resp.body) else None
            forwarding.ended(self, poor, UpstreamBadResponse(node.name, fault, resp.status))
            return
        req = forwarding.req
        if req.resend and forwarding.outcome.resent:
            sent = req.unsure_of[1] if req.unsure_of is not None else None
            success = router.chain.duplicate(resp.body, sent)
            if success is not None:
                if req.resend == CONFIRMED:
                    success = b""  # "already have it" confirms no inclusion
                self._record(now, None)
                forwarding.ended_duplicate(self, resp, success)
                return
        unsure = forwarding.req.unsure_of
        if (
            unsure is not None
            and null_answer(resp.body)
            and router.chain.empty_is_unsure(unsure[0], unsure[1], router.fleet.best_head)
        ):
            self._record(now, None)
            forwarding.ended_empty(self, resp)
            return
        forwarding.ended(self, resp, None)
        self._record(now, None)
        chain = router.chain
        head = chain.head_in(resp.body)
        if head is None and req.unsure_of is not None and chain.reports_head(req.unsure_of[0]):
            head = chain.reported_head(resp.body)  # (eth_blockNumber's answer is the head)
        if head is not None:
            node.observe_head(now, head)  # freshness between probes

    def _record(self, now: float, fault: str | None) -> None:
        """The try's outcome on its node (``fault``: why it was the node's, or None)."""
        router = self.forwarding.router
        self.node.end(
            now,
            now - self.started,
            fault is None,
            error=fault,
            penalty=router.per_try,
            health=router.fleet.health,
            load=self.load,
        )
        router.slots.freed()

    def cancel(self, lost: bool = False) -> None:
        """Stop the try: abandoned by us (the client went, a duplicate settled it), not
        failed by the node; ``lost``: another node answered the request first (a hedge),
        and this one is charged the time it had taken (:meth:`Node.lost`)."""
        if not self.live:
            return
        self.live = False
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.cancel()
        router = self.forwarding.router
        if lost:
            self.node.lost(router.clock(), self.started)
        else:
            self.node.cancel(self.started)
        router.slots.freed()
