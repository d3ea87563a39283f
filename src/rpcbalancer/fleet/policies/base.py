"""What a policy is: ``pick(nodes, ctx) -> node``, sans-IO.

``nodes`` is never empty and keeps the configured order; the router has already removed
the nodes that may not serve and the ones this request tried. A policy may keep state
between picks (a round-robin position), but it reads no clock and no global RNG: the time
comes in ``ctx`` and randomness from the ``rng`` it was built with.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

from ...config import StrategyConfig
from ..nodes import Node


class PickContext:
    """What a pick may know besides the nodes (made per pick: a plain class, whose
    ``__init__`` compiles, where a dataclass's would not)."""

    __slots__ = ("client_ip", "now")

    def __init__(self, now: float, client_ip: str = "") -> None:
        self.now = now
        self.client_ip = client_ip

    def __repr__(self) -> str:
        return f"PickContext(now={self.now!r}, client_ip={self.client_ip!r})"


class Policy(Protocol):
    name: ClassVar[str]

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node: ...


class BasePolicy:
    """Shared constructor: the strategy's parameters and a seeded RNG."""

    name: ClassVar[str] = ""
    how: ClassVar[str] = ""
    """One line on how the policy picks, for the status page and ``X-RPC-Scores``."""

    def __init__(self, params: StrategyConfig, rng: random.Random) -> None:
        self.params = params
        self.rng = rng

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        raise NotImplementedError

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        """The node's score now (lower wins; None when the policy does not score nodes)
        and what went into it."""
        return None, self.how


def ms(seconds: float | None) -> str:
    return "unmeasured" if seconds is None else f"{seconds * 1000:.1f} ms"
