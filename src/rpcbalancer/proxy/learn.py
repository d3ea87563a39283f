"""The learn step: what an answer teaches, on its way back to the client.

A node's answer says something of its chain (a dynamic global properties answer carries the
head and the last irreversible block: the group's :class:`~..cache.policy.Finality` moves on,
and the node's irreversible block with it) and may be kept for the next client who asks the
same (:meth:`.AnswerCache.keep` judges it: never an error or an empty answer, never a block
that is not the one asked for, never what a node the fleet excludes said). A kept answer goes
to this process's tier at once and to Redis, when there is one, in the background.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cache import AnswerCache
from ..config.ttl import NO_CACHE
from ..fleet.nodes import Node
from ..health.chains import Chain
from ..jsonrpc import dumps, number_after
from .forwarding import Outcome
from .plan import Plan


class Learner:
    def __init__(self, cache: AnswerCache | None, chain: Chain, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.chain = chain
        self.clock = clock

    def __repr__(self) -> str:
        return f"<Learner {self.cache!r}>"

    def learn(self, plan: Plan, outcome: Outcome) -> None:
        """What a single call's answer teaches."""
        resp, node = outcome.response, outcome.node
        if resp is None or node is None or resp.status >= 400:
            return
        body = resp.body
        group = plan.group
        heads = group.heads
        if heads is not None:  # a block it shows exists: never a lower head after it
            block = self.chain.named_block(plan.parts[-1], body)
            if block is not None:
                heads.saw(block, node)
        now = self.clock()
        if b'"last_irreversible_block_num"' in body:
            lib = number_after(body, b'"last_irreversible_block_num"')
            if lib is not None:
                node.observe_irreversible(lib)
                group.chain_now(now).saw(self.chain.head_in(body), lib)
        cache = self.cache
        if cache is None or plan.ttl == NO_CACHE:
            return
        if group.fleet.exclusion(node, now) is not None:
            return  # an excluded node served (failing open): never keep what it said
        finality = group.chain_now(now)
        cache.offer_body(plan, body, node.name, node.irreversible, finality, plan.shape.label)

    def keep(self, plan: Plan, result: Any, node: Node) -> None:
        """Learn from a batch member's ``result`` (from ``node``): the block it shows, and
        keep it when the cache may."""
        heads = plan.group.heads
        if (
            heads is not None
            and isinstance(result, dict)
            and ("number" in result or "blockNumber" in result)
        ):
            block = self.chain.named_block(plan.parts[-1], dumps(result))
            if block is not None:
                heads.saw(block, node)
        cache = self.cache
        if cache is None or plan.ttl == NO_CACHE:
            return
        now = self.clock()
        group = plan.group
        if group.fleet.exclusion(node, now) is not None:
            return
        finality = group.chain_now(now)
        cache.offer(plan, result, node.name, node.irreversible, finality, plan.shape.label)
