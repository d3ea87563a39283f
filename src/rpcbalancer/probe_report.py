"""One probe round over a configured fleet, as table rows for ``rpcbalancer probe``."""

from __future__ import annotations

from .balancer import Balancer
from .config import Config


async def run_probe(config: Config) -> tuple[list[tuple[str, ...]], int]:
    balancer = Balancer(config)
    try:
        await balancer.prober.round()
    finally:
        await balancer.transport.aclose()
    fleet = balancer.fleet
    now = balancer.clock()
    best = fleet.best_head()
    rows: list[tuple[str, ...]] = []
    usable = 0
    for node in fleet.nodes:
        probe = node.probe
        reason = fleet.exclusion(node, now, best)
        usable += reason is None
        lag = fleet.lag(node, best)
        rows.append(
            (
                node.name,
                "yes" if probe is not None and probe.ok else "no",
                f"{probe.latency * 1000:.0f} ms" if probe is not None else "-",
                str(probe.head_block)
                if probe is not None and probe.head_block is not None
                else "-",
                str(lag) if lag is not None else "-",
                (probe.version or "-") if probe is not None else "-",
                reason or "",
            )
        )
    return rows, usable
