"""Table rows for the CLI: one probe round (``probe``) and the store's shared view (``status``)."""

from __future__ import annotations

import time

from .balancer import Balancer
from .config import Config, NodeConfig
from .nodes import Fleet, Health, Node, parse_version
from .store import ProbeRecord, open_store


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
    urls = list(dict.fromkeys([*(n.url for n in config.nodes if n.url in latest), *latest]))
    by_url = {n.url: n for n in config.nodes}
    nodes = [Node(i, by_url.get(url) or NodeConfig(url=url)) for i, url in enumerate(urls)]
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
        node.apply_probe(latest[node.url].to_result(mono_now=mono, wall_now=wall))
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
        record = latest[node.url]
        reason = fleet.exclusion(node, mono, best)
        usable += reason is None
        lag = fleet.lag(node, best)
        failed = last_error.get(node.url)
        rows.append(
            (
                node.name,
                "usable" if reason is None else f"excluded: {reason}",
                _pct(latencies.get(node.url, []), 0.5),
                _pct(latencies.get(node.url, []), 0.99),
                str(record.head_block) if record.head_block is not None else "-",
                str(lag) if lag is not None else "-",
                record.version or "-",
                f"{failed.error} ({wall - failed.at:.0f}s ago)" if failed else "",
                f"{wall - record.at:.0f}s ago",
            )
        )
    return rows, usable
