"""A group of backends: its nodes (one fleet), the router that picks among them, and what its
nodes have said of their chain.

Groups come from ``upstreams`` (the nodes of ``nodes`` are the group ``default``), and routes
send each call to one (:mod:`.plan`). What is known of the chain (its head and last
irreversible block, neither ever moving back) is per group: a hivemind's answers say nothing of
a chain node's head. The cache reads it to decide what may be served and kept.
"""

from __future__ import annotations

from ..cache.policy import Finality
from ..config.model import UpstreamGroup
from ..fleet.fleet import Fleet
from ..fleet.policies import BasePolicy
from .heads import HeadFloor
from .router import Router

REFRESH = 0.5
"""Seconds between two looks at the nodes' heads (the cache asks on every look-up)."""


class Group:
    """A named group of backends: its nodes, the router that picks among them, and what is
    known of its chain (the head and last irreversible block its nodes reported)."""

    __slots__ = ("finality", "fleet", "heads", "looked", "name", "policy", "router", "spec")

    def __init__(
        self,
        name: str,
        spec: UpstreamGroup,
        fleet: Fleet,
        policy: BasePolicy,
        router: Router,
        heads: HeadFloor | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.fleet = fleet
        self.policy = policy
        self.router = router
        self.finality = Finality()
        self.looked = -1.0
        self.heads = heads
        """The head its answers have reported, held (``consistency.monotonic_head``)."""

    def __repr__(self) -> str:
        return f"<Group {self.name} {self.policy.name} {self.fleet!r}>"

    def chain_now(self, now: float) -> Finality:
        """What the group knows of its chain, brought up to date with its nodes' probes and
        answers at most twice a second (the cache asks on every lookup)."""
        finality = self.finality
        if now - self.looked >= REFRESH:
            self.looked = now
            for node in self.fleet.nodes:
                if node.forked is None:  # a fork's head and finality are not the chain's
                    finality.saw(node.head(), node.irreversible)
        return finality
