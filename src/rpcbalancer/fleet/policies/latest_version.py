"""``latest_version``: the node running the newest chain version; ties to the faster."""

from __future__ import annotations

from collections.abc import Sequence

from ..nodes import Node, parse_version
from .base import BasePolicy, PickContext, ms


class LatestVersion(BasePolicy):
    name = "latest_version"
    how = "newest chain version; ties to the lower latency"

    def explain(self, node: Node, now: float) -> tuple[float | None, str]:
        version = node.probe.version if node.probe else None
        return None, f"version {version or 'unknown'}, latency {ms(node.latency(now))}"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        def key(node: Node) -> tuple[tuple[int, ...], float]:
            version = parse_version(node.probe.version if node.probe else None) or ()
            return (version, -(node.latency(ctx.now) or 0.0))

        return max(nodes, key=key)
