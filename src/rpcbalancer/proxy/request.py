"""What the route step hands a group's router: one request to forward.

A :class:`ProxyRequest` is a :class:`~..upstream.wire.NodeRequest` (what a node is sent) and
what the router decides on: the client's address (``ip_hash``), the route's per-try timeout
and retries, the client's deadline, the nodes to try last, and the single call whose
``null`` may only mean "not here yet". :class:`Routing` is what a forwarding uses of its router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..callbacks import DueQueue
from ..config import HedgeConfig
from ..failsafe.budget import RetryBudget
from ..failsafe.slots import SlotLine
from ..fleet.fleet import Fleet
from ..fleet.nodes import Node
from ..fleet.policies import BasePolicy
from ..health.chains import Chain
from ..upstream.pool import Starter
from ..upstream.wire import NodeRequest


class ProxyRequest(NodeRequest):
    """A request to forward: what goes to the node, and what the router decides on. (Plain
    classes here, not dataclasses: they are made per request, and a dataclass's ``__init__``
    stays interpreted when the module is compiled.)"""

    __slots__ = (
        "avoid",
        "client_ip",
        "deadline",
        "fanout",
        "min_head",
        "per_try",
        "prefer",
        "resend",
        "retries",
        "unsure_of",
    )

    def __init__(
        self,
        method: str,
        path: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        idempotent: bool = True,
        client_ip: str = "",
        per_try: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
        avoid: tuple[Node, ...] = (),
        unsure_of: tuple[str, Any] | None = None,
        resend: int = 0,
        fanout: int = 1,
    ) -> None:
        # The base's fields set here, not by its __init__: one module entered per request
        # on the way down (tests/component/test_way.py), not two.
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.idempotent = idempotent
        self.client_ip = client_ip
        self.per_try = per_try
        """Seconds a try may take, when the route says (0: only the deadline limits it)."""
        self.retries = retries
        """Further tries after a failure, when the route says."""
        self.deadline = deadline
        """When the request must be answered (the clock's time), when sooner than the
        router's own deadline (a client's ``X-RPC-Timeout``, Lambda's time left)."""
        self.avoid = avoid
        """Nodes to try last (they just failed the same read for another request)."""
        self.unsure_of = unsure_of
        """A single call (its method as routes name its last part, and its params): when a
        node answers it ``null``, the chain preset says whether that may only mean "not here
        yet" (a receipt, a transaction or a block by hash, a block a lagging node has not
        reached); then another node is asked before ``null`` stands (within the deadline
        and the budget)."""
        self.resend = resend
        """A broadcast the chain refuses twice (``AGAIN``, ``CONFIRMED``): when its fate is
        unknown it goes to another node; 0: never sent twice once it may have arrived."""
        self.fanout = fanout
        """Nodes such a broadcast goes to at once."""
        self.prefer: Node | None = None
        """The node to ask first while it may serve (it accepted the client's broadcast)."""
        self.min_head = 0
        """Else, nodes whose head reached this block first (0: any)."""


class Routing(Protocol):
    """What a forwarding uses of its router."""

    fleet: Fleet
    policy: BasePolicy
    chain: Chain
    per_try: float
    total: float
    retries: int
    clock: Callable[[], float]
    budget: RetryBudget
    slots: SlotLine
    hedge: HedgeConfig | None
    hedges: DueQueue
    loop: asyncio.AbstractEventLoop | None
    start_request: Starter

    def another(self, req: ProxyRequest, tried: list[Node], now: float) -> Node | None: ...

    async def ping_race(self, nodes: Sequence[Node], deadline: float) -> Node | None: ...

    def why_none(self) -> str: ...
