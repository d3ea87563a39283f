"""The package's import graph against the layers of ARCHITECTURE.md: fails on an import
that goes up a layer, on a module in no layer, and on any cycle (imports under
``TYPE_CHECKING`` count too).

    python tools/import_graph.py [--show]

Reads every module of ``src/rpcbalancer`` with ``ast`` (nothing is imported), resolves
relative imports, reads the layers from ARCHITECTURE.md's "What may import what" (a numbered
list, bottom first, each line naming its packages in backticks before its colon), and checks
each import against them; then finds the strongly connected components of the graph of
modules. Each fault is printed with the import that makes it. ``--show`` prints the whole
graph, one module and what it imports per line. Run by ``make lint`` and by the test suite.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
ARCHITECTURE = ROOT.parent / "ARCHITECTURE.md"
PACKAGE = "rpcbalancer"
SECTION = "## What may import what"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports."""
    files = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # "from . import x" may name a module: count it when it is one.
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(PACKAGE):
                    edges[name].add(target)
    # A package's __init__ importing its own modules is its face, not a cycle to report.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    return edges


def layers(text: str) -> dict[str, int]:
    """Each package's layer (1 at the bottom), from ARCHITECTURE.md's list."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    found: dict[str, int] = {}
    for line in text[start : end if end > 0 else None].splitlines():
        numbered = re.match(r"(\d+)\. (.*)", line)
        if numbered is None:
            continue
        head = numbered.group(2).split(": ", 1)[0]
        for name in re.findall(r"`([\w.]+)`", head):
            found[name] = int(numbered.group(1))
    return found


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """A module's layer: its top package's under ``rpcbalancer`` (None: in no layer)."""
    parts = module.split(".")
    return table.get(parts[1]) if len(parts) > 1 else 0


def upward(edges: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    """The imports that go up a layer, and the modules in no layer, in words."""
    faults = []
    for name in sorted(edges):
        mine = layer_of(name, table)
        if mine is None:
            faults.append(f"{name} is in no layer of ARCHITECTURE.md")
            continue
        for target in sorted(edges[name]):
            theirs = layer_of(target, table)
            if theirs is not None and theirs > mine:
                faults.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    return faults


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    edges = graph()
    if "--show" in sys.argv:
        for name in sorted(edges):
            print(f"{name}: {', '.join(sorted(edges[name])) or '-'}")
    faults = upward(edges, layers(ARCHITECTURE.read_text()))
    for fault in faults:
        print("layer:", fault)
    found = cycles(edges)
    for component in found:
        members = set(component)
        print("import cycle:", " <-> ".join(component))
        for name in component:
            for target in sorted(edges[name] & members):
                print(f"  {name} imports {target}")
    if not found and not faults:
        print(f"{len(edges)} modules in their layers, no import cycle")
    return 1 if found or faults else 0


if __name__ == "__main__":
    sys.exit(main())
