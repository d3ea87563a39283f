"""The counters of one process: plain integers bumped on the hot path, and how the workers of
one server share them (each writes a snapshot to a shared folder every second; the worker
that answers a scrape adds the live ones up). :mod:`.metrics` renders them."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..fleet.nodes import LATENCY_BUCKETS, Node
from ..jsonrpc import RpcCall


class Stats:
    """What the gateway counts, per process."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cache",
        "duration",
        "duration_sum",
        "heads_held",
        "heads_released",
        "heavy_refused",
        "hedge_wins",
        "hedges",
        "methods",
        "overload",
        "requests",
        "resent",
        "retries",
        "websocket",
    )

    def __init__(self, methods: Iterable[str]) -> None:
        self.methods = frozenset(methods)
        self.requests: dict[tuple[str, str], int] = {}
        self.duration = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.retries = 0
        self.heads_held = 0
        """Answers behind the head told before, replaced by the one that told it."""
        self.heads_released = 0
        """Answers behind the head told before, passed on after ``consistency.hold_for``."""
        self.heavy_refused = 0
        """Calls refused for asking more than one call may (a route's ``limit``)."""
        self.resent: dict[str, int] = {}
        """Broadcasts sent again (or to several nodes at once), by how they ended: the
        request's outcome, or ``duplicate`` (a node's "already have it", taken as success)."""
        self.cache: dict[tuple[str, str], int] = {}
        """Answer cache events by (method label, event): the cache counts into it."""
        self.websocket: dict[str, int] = {}
        """WebSocket connections and subscriptions: gauges (``connections``,
        ``subscriptions``) and counters (messages, switches, fills, closes)."""
        self.overload: dict[str, int] = {}
        """The worker's admission by load (:mod:`~rpcbalancer.proxy.overload`): gauges
        (``inflight``, ``shedding``) and counters (``refused_queue``, ``refused_inflight``,
        ``sheds``)."""

    def method_label(self, call: RpcCall | None) -> str:
        if call is None:
            return "GET"
        if call.batch:
            return "batch"
        method = call.methods[0] if call.methods else ""
        return method if method in self.methods else "other"

    def label_of(self, method: str) -> str:
        """A method as a metric label: itself when it is a known one, else ``other``."""
        return method if method in self.methods else "other"

    def snapshot(self, nodes: Iterable[Node]) -> dict[str, Any]:
        """The counters of this process (JSON-able), gateway and nodes."""
        return {
            "pid": os.getpid(),
            "at": time.time(),
            "requests": [[m, o, n] for (m, o), n in self.requests.items()],
            "duration": list(self.duration),
            "duration_sum": self.duration_sum,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "retries": self.retries,
            "heads_held": self.heads_held,
            "heads_released": self.heads_released,
            "heavy_refused": self.heavy_refused,
            "resent": dict(self.resent),
            "cache": [[m, e, n] for (m, e), n in self.cache.items()],
            "websocket": dict(self.websocket),
            "overload": dict(self.overload),
            "nodes": {
                n.name: {
                    "tries": n.requests,
                    "failures": n.failures,
                    "hist": list(n.latencies.hist),
                    "sum": n.latencies.sum,
                    "ejected_by": dict(n.breaker.ejected_by),
                    "inflight": n.inflight,
                }
                for n in nodes
            },
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes added up."""
    total: dict[str, Any] = {
        "workers": 0,
        "requests": {},
        "duration": [0] * (len(LATENCY_BUCKETS) + 1),
        "duration_sum": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
        "hedges": 0,
        "hedge_wins": 0,
        "retries": 0,
        "heads_held": 0,
        "heads_released": 0,
        "heavy_refused": 0,
        "resent": {},
        "cache": {},
        "websocket": {},
        "overload": {},
        "nodes": {},
    }
    for snap in snapshots:
        total["workers"] += 1
        for method, outcome, count in snap["requests"]:
            total["requests"][method, outcome] = total["requests"].get((method, outcome), 0) + count
        total["duration"] = _add(total["duration"], snap["duration"])
        for key in ("duration_sum", "bytes_in", "bytes_out", "hedges", "hedge_wins", "retries"):
            total[key] += snap[key]
        for key in ("heads_held", "heads_released", "heavy_refused"):
            total[key] += snap.get(key, 0)  # (a worker of an older version has none)
        for ending, count in snap.get("resent", {}).items():
            total["resent"][ending] = total["resent"].get(ending, 0) + count
        for part in ("websocket", "overload"):
            for what, count in snap.get(part, {}).items():
                total[part][what] = total[part].get(what, 0) + count
        for method, event, count in snap.get("cache", []):
            total["cache"][method, event] = total["cache"].get((method, event), 0) + count
        for name, node in snap["nodes"].items():
            into = total["nodes"].setdefault(
                name,
                {
                    "tries": 0,
                    "failures": 0,
                    "hist": [0] * len(node["hist"]),
                    "sum": 0.0,
                    "ejected_by": {},
                    "inflight": 0,
                },
            )
            for key in ("tries", "failures", "sum", "inflight"):
                into[key] += node[key]
            into["hist"] = _add(into["hist"], node["hist"])
            for cause, count in node["ejected_by"].items():
                into["ejected_by"][cause] = into["ejected_by"].get(cause, 0) + count
    return total


def _add(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


class SnapshotFolder:
    """The shared folder of worker snapshots (one file per worker, replaced atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.mine = self.folder / f"worker-{os.getpid()}.json"

    def write(self, snapshot: dict[str, Any]) -> None:
        partial = self.mine.with_suffix(".partial")
        partial.write_text(json.dumps(snapshot))
        partial.replace(self.mine)

    def others(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.folder.glob("worker-*.json")):
            if path == self.mine:
                continue
            try:
                snap: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if _alive(int(snap.get("pid", 0))):
                yield snap

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.mine.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


WINDOWS = {"1min": 60, "5min": 300, "15min": 900}
"""DoctorLai's windows of requests per second."""


class Rates:
    """The requests counter sampled once a second, for requests per second over windows."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=901)

    def sample(self, total: int, now: float) -> None:
        self.samples.append((now, total))

    def per_second(self) -> dict[str, float]:
        samples = self.samples
        if len(samples) < 2:
            return dict.fromkeys(WINDOWS, 0.0)
        now, last = samples[-1]
        rates = {}
        for name, seconds in WINDOWS.items():
            count = last - next((n for at, n in samples if now - at <= seconds), last)
            rates[name] = round(count / seconds, 2)
        return rates
