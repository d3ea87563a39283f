"""The modules compiled with mypyc keep to what compiles as CPython runs it.

mypyc compiles the request's way from the same source that runs interpreted; a few things
that CPython forgives behave differently once compiled, and have crashed here: a name bound
by two ``except ... as`` clauses of different types in one function (the compiled variable
takes the first type, and the second exception fails a type check), and a class used only
under ``TYPE_CHECKING`` (the compiled module needs it at import, and segfaulted when it was
imported first). This reads the source of every module ``setup.py`` compiles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILED = re.findall(r'"([a-z_/]+\.py)"', (ROOT / "setup.py").read_text())


def trees() -> list[tuple[str, ast.Module]]:
    package = ROOT / "src" / "rpcbalancer"
    return [(name, ast.parse((package / name).read_text())) for name in COMPILED]


def test_setup_compiles_the_modules_of_the_way() -> None:
    assert {"proxy/gateway.py", "proxy/server.py", "upstream/pool.py"} <= set(COMPILED)
    assert all((ROOT / "src" / "rpcbalancer" / name).is_file() for name in COMPILED)


def test_no_exception_name_is_bound_to_two_types_in_one_function() -> None:
    clashes = []
    for name, tree in trees():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for handler in ast.walk(function):
                if isinstance(handler, ast.ExceptHandler) and handler.name and handler.type:
                    types.setdefault(handler.name, set()).add(ast.unparse(handler.type))
            clashes += [f"{name} {function.name}: {v} {t}" for v, t in types.items() if len(t) > 1]
    assert clashes == []


def test_no_compiled_module_imports_only_for_type_checking() -> None:
    guarded = [
        name
        for name, tree in trees()
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    ]
    assert guarded == []
