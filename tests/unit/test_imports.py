"""The package's import graph: no cycle, and every module imports on its own."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402 - tools/ is not a package


def test_no_import_cycle() -> None:
    edges = import_graph.graph()
    assert len(edges) > 50 and "rpcbalancer.proxy.gateway" in edges
    assert "rpcbalancer.balancer" in edges["rpcbalancer.proxy.gateway"]  # it sees imports
    assert import_graph.cycles(edges) == []


def test_every_import_keeps_to_the_layers_of_the_architecture_page() -> None:
    table = import_graph.layers(import_graph.ARCHITECTURE.read_text())
    assert table["errors"] == table["config"] == 1 and table["commands"] == max(table.values())
    assert table["config"] < table["fleet"] < table["upstream"] < table["proxy"]
    assert import_graph.upward(import_graph.graph(), table) == []


def test_the_layer_check_finds_an_import_that_goes_up() -> None:
    table = {"config": 1, "health": 5}
    edges = {
        "rpcbalancer.config.model": {"rpcbalancer.health.chains"},  # main's, before #20
        "rpcbalancer.health.chains": {"rpcbalancer.config"},
        "rpcbalancer.stray": set(),
    }
    assert import_graph.upward(edges, table) == [
        "rpcbalancer.config.model (layer 1) imports rpcbalancer.health.chains (layer 5)",
        "rpcbalancer.stray is in no layer of ARCHITECTURE.md",
    ]


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module first, alone: an import that only works after another module was
    imported (a hidden cycle, a missing import) fails here."""
    modules = sorted(m for m in import_graph.graph() if not m.endswith("__main__"))

    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
        )
        return module, done.returncode, done.stderr[-400:]

    with ThreadPoolExecutor(4) as pool:
        failed = [r for r in pool.map(load, modules) if r[1] != 0]
    assert failed == []
