r"""The router: which node, how many tries. The only place that decides either.

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
a broadcast (a transaction) is never sent twice once its bytes may have reached a node
(that node's answer, whatever it is, is the only one), unless its chain refuses a
transaction it already has (``ProxyRequest.resend``): then it goes to another node, and
that node's "already have it" is the success it stands for. ``broadcast.fanout`` sends such
a transaction to two nodes at once.

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

:meth:`Router.start` runs a request as a :class:`Forwarding`, a small state machine
driven by the transport's callbacks (the data plane: no task, future or timer of its own per
request; hedges are timed by one loop timer for all requests, see
:class:`.callbacks.DueQueue`). Only the rare steps that must wait (the race's pings, a free
slot under ``node_concurrency``, a new connection) run as tasks. The forwarding's states and
the one table of their transitions are in :mod:`.forwarding`.

Who calls whom on the hot path (one request, no task)::

    Gateway (the way) -> Router.start -> Forwarding.step -> Try.start -> H1Transport.start
    Connection (answer parsed) -> Exchange.answered -> Try.ended -> Forwarding.ended
        -> Forwarding.finish -> the gateway's done(outcome): learn, answer, account, reply
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..callbacks import DueQueue
from ..config import HedgeConfig
from ..failsafe.budget import RetryBudget
from ..failsafe.slots import SlotLine
from ..fleet.fleet import Fleet, reached
from ..fleet.nodes import Node
from ..fleet.policies import BasePolicy, PickContext
from ..health.chains import Chain
from ..health.probe import probe_headers, race
from ..upstream.pool import Transport, starter
from . import forwarding
from .forwarding import Forwarding, Outcome, judge
from .request import ProxyRequest

__all__ = ["Forwarding", "Outcome", "ProxyRequest", "Router", "judge"]


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
        self.slots = SlotLine(node_concurrency, queue_size, clock)
        self.start_request = starter(transport)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hedges = DueQueue()

    def __repr__(self) -> str:
        return f"<Router {self.policy.name} {self.budget!r} {self.slots!r}>"

    def start(self, req: ProxyRequest, done: Callable[[Outcome], None]) -> Forwarding:
        """Forward ``req``; ``done(outcome)`` is called once (possibly before this returns)
        unless the returned forwarding is cancelled first."""
        return forwarding.start(self, req, done)

    def another(self, req: ProxyRequest, tried: list[Node], now: float) -> Node | None:
        """A node for a hedge: usable, not tried yet (none when failing open)."""
        candidates, failopen = self.fleet.candidates(now)
        left = [n for n in candidates if n not in tried]
        if not left or failopen:
            return None
        if req.min_head:
            left = reached(left, req.min_head)
        return self.policy.pick(left, PickContext(now=now, client_ip=req.client_ip))

    async def ping_race(self, nodes: Sequence[Node], deadline: float) -> Node | None:
        """The race strategy's pings: the first node to answer healthy, or None."""
        timeout = max(0.001, min(self.per_try, deadline - self.clock()))
        call = self.chain.probe_calls()[0]
        return await race(
            self.transport, nodes, call, timeout, self.clock, self.per_try, self.ping_headers
        )

    def why_none(self) -> str:
        now = self.clock()
        best = self.fleet.best_head()
        reasons = [
            f"{n.name}: {self.fleet.exclusion(n, now, best) or 'tried'}" for n in self.fleet.nodes
        ]
        return "no node can serve this request (" + "; ".join(reasons) + ")"
