"""Table rows for the CLI: one probe round (``probe``) and the store's shared view (``status``)."""

from __future__ import annotations

import time

from ..balancer import Balancer
from ..config import Config, NodeConfig, display_url
from ..fleet.fleet import Fleet
from ..fleet.nodes import Health, Node, parse_version
from ..health.store import ProbeRecord, open_store


async def run_probe(config: Config) -> tuple[list[tuple[str, ...]], int]:
    balancer = Balancer(config)
    try:
        await balancer.prober.round(config.probe.round_deadline)
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


def _unknown(key: str) -> NodeConfig:
    """A node the store knows and this config does not (another fleet's, or renamed)."""
    try:
        return NodeConfig(url=key.partition("#")[0], name=display_url(key))
    except ValueError:
        return NodeConfig(url="http://unknown.invalid", name=display_url(key))


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


async def run_status(config: Config, window: float = 3600.0) -> tuple[list[tuple[str, ...]], int]:
    """The store's view judged by the configured rules: rows, and how many nodes are usable.
    Raises whatever the store raises when it cannot be read."""
    store = open_store(config.store)
    await store.open()
    try:
        wall = time.time()
        latest = await store.latest()
        history = await store.history(wall - window)
    finally:
        await store.close()
    by_key = {n.key: n for n in config.nodes}
    keys = list(dict.fromkeys([*(k for k in by_key if k in latest), *latest]))
    nodes = [Node(i, by_key.get(key) or _unknown(key)) for i, key in enumerate(keys)]
    fleet = Fleet(
        nodes or [Node(0, config.nodes[0])],
        Health(
            max_block_lag=config.max_block_lag,
            max_head_age=config.max_head_age,
            min_version=parse_version(config.min_version),
        ),
    )
    mono = time.monotonic()
    for node in nodes:
        node.apply_probe(latest[node.key].to_result(mono_now=mono, wall_now=wall))
    latencies: dict[str, list[float]] = {}
    last_error: dict[str, ProbeRecord] = {}
    for record in history:
        if record.ok:
            latencies.setdefault(record.node, []).append(record.latency)
        elif record.error:
            last_error[record.node] = record
    best = fleet.best_head()
    rows: list[tuple[str, ...]] = []
    usable = 0
    for node in nodes:
        record = latest[node.key]
        reason = fleet.exclusion(node, mono, best)
        usable += reason is None
        lag = fleet.lag(node, best)
        failed = last_error.get(node.key)
        rows.append(
            (
                node.name,
                "usable" if reason is None else f"excluded: {reason}",
                _pct(latencies.get(node.key, []), 0.5),
                _pct(latencies.get(node.key, []), 0.99),
                str(record.head_block) if record.head_block is not None else "-",
                str(lag) if lag is not None else "-",
                record.version or "-",
                f"{failed.error} ({wall - failed.at:.0f}s ago)" if failed else "",
                f"{wall - record.at:.0f}s ago",
            )
        )
    return rows, usable
