"""The simulated node fleet used by the tests, the benchmark and the demo."""

from __future__ import annotations

from .fleet import FleetThread
from .mempool import Mempool
from .node import Behaviour, FakeNode, chain_head, running
from .process import free_port, stop_process

__all__ = [
    "Behaviour",
    "FakeNode",
    "FleetThread",
    "Mempool",
    "chain_head",
    "free_port",
    "running",
    "stop_process",
]
