"""``rpcbalancer top``: the status page's numbers, live in a terminal (for servers without a
browser). It reads a running balancer's ``/status.json`` every interval."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urlopen(url.rstrip("/") + "/status.json", timeout=timeout) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _cache(cache: dict[str, Any] | None) -> str:
    if not cache:
        return ""
    return f"  cache: {_pct(cache.get('hit_ratio'))} hits, {cache.get('items', 0)} answers"


def _groups(groups: list[dict[str, Any]]) -> str:
    if len(groups) < 2:
        return ""
    return "  groups: " + ", ".join(f"{g['name']} {g['usable']}/{g['nodes']}" for g in groups)


def frame(doc: dict[str, Any], source: str) -> Group:
    b = doc["balancer"]
    summary = Text.assemble(
        (f"{source}  ", "dim"),
        (f"{b['chain']} v{b['version']}  ", "bold"),
        f"routing: {b['strategy']}  choice: ",
        (str(b.get("choice") or "–"), "bold green"),
        f"  usable: {b['usable']} of {len(doc['nodes'])}",
        (" (failing open)" if b.get("failing_open") else "", "bold red"),
        f"  requests: {b.get('requests', 0)}  hedged: {b.get('hedges', 0)}",
        f"  retried: {b.get('retries', 0)}",
        _cache(b.get("cache")),
        _groups(b.get("groups") or []),
    )
    table = Table(expand=True, header_style="bold")
    for column, justify in (
        ("node", "left"),
        ("state", "left"),
        ("p50/p99 ms", "right"),
        ("head block", "right"),
        ("lag", "right"),
        ("version", "left"),
        ("errors", "right"),
        ("share", "right"),
        ("in flight", "right"),
        ("score", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for node in doc["nodes"]:
        usable = node["state"] == "usable"
        state = Text("usable", "green") if usable else Text(f"excluded: {node['reason']}", "red")
        name = Text(("▶ " if node["name"] == b.get("choice") else "  ") + node["name"])
        if len(b.get("groups") or []) > 1:
            name.append(f" ({node.get('group', '')})", "dim")
        latency = node["latency_ms"]
        cells = (
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
            str(node["head_block"] if node["head_block"] is not None else "–"),
            str(node["lag"] if node["lag"] is not None else "–"),
            str(node["version"] or "–"),
            _pct(node["error_rate"]),
            _pct(node.get("share")),
            str(node["inflight"]),
            "–" if node.get("score") is None else f"{node['score']:.3g}",
        )
        # As text, never markup: what nodes report may hold brackets.
        table.add_row(name, state, *(Text(cell) for cell in cells))
    return Group(summary, table)


def run_top(url: str, interval: float, once: bool, console: Console | None = None) -> int:
    """Show the view every ``interval`` seconds until interrupted; ``once``: print one frame.
    Returns the exit code: 0, or 2 when the balancer cannot be read."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: wide enough for every column
            console = Console(width=180)
    if once:
        try:
            console.print(frame(fetch(url), url))
        except (URLError, OSError, ValueError) as exc:
            console.print(f"[red]cannot read {url}/status.json:[/red] {exc}")
            return 2
        return 0
    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                try:
                    live.update(frame(fetch(url), url), refresh=True)
                except (URLError, OSError, ValueError) as exc:
                    live.update(Text(f"cannot read {url}/status.json: {exc}", "red"), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
