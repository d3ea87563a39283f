"""Sans-IO builders for unit tests: nodes and fleets without any network."""

from __future__ import annotations

from rpcbalancer.config import NodeConfig
from rpcbalancer.fleet.fleet import Fleet
from rpcbalancer.fleet.nodes import Health, Node, ProbeResult


def make_nodes(count: int, weights: list[float] | None = None) -> list[Node]:
    weights = weights or [1.0] * count
    return [Node(i, NodeConfig(url=f"http://n{i}.test", weight=weights[i])) for i in range(count)]


def probed(
    node: Node,
    *,
    at: float = 0.0,
    ok: bool = True,
    head: int | None = 1000,
    latency: float = 0.01,
    version: str | None = "0.23.1",
    head_age: float | None = 1.0,
    error: str | None = None,
    hash: str | None = None,
    parent: str | None = None,
) -> Node:
    node.apply_probe(
        ProbeResult(
            at=at,
            ok=ok,
            latency=latency,
            error=error,
            head_block=head,
            head_age=head_age,
            version=version,
            head_hash=hash,
            parent_hash=parent,
        )
    )
    return node


def fleet(count: int = 3, **health: object) -> Fleet:
    return Fleet(make_nodes(count), Health(**health))  # type: ignore[arg-type]
