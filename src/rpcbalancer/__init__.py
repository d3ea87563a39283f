"""rpcbalancer: a load balancer for blockchain JSON-RPC API nodes.

The modules on the request's way are compiled (mypyc) from this same source when the package
is installed where a C compiler exists; the source runs interpreted where not, and wherever
``RPCBALANCER_NO_EXTENSIONS`` is set (at install: nothing is compiled; at run time: the
compiled modules are not loaded, the source is). In a checkout, a compiled module older than
its source is never run: the source is, with a warning. :func:`build` says which runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

__all__ = ["__version__", "build"]


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds this package's modules in their source only (``RPCBALANCER_NO_EXTENSIONS``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(__name__ + ".") or path is None:
            return None
        loaders = [(importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)]
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, *loaders).find_spec(fullname, target)
            if spec is not None:
                return spec
        return None


def _stale() -> bool:
    """In a checkout (an editable install), whether a compiled module is older than its
    source: then it would run code that is no longer there, so the source runs instead
    (all of it: compiled modules call each other directly, they load together or not)."""
    here = Path(__file__).resolve().parent
    if not (here.parent.name == "src" and (here.parent.parent / "setup.py").is_file()):
        return False  # installed: the source and what was compiled from it came together
    # The code lives in the library the compiled modules share (each module's own file
    # only points into it, and is rewritten only when that changes).
    shared = [p.stat().st_mtime for p in here.parent.glob(f"{__name__}__mypyc*.so")]
    for library in here.rglob("*.so"):
        source = library.with_name(library.name.split(".", 1)[0] + ".py")
        built = max([library.stat().st_mtime, *shared])
        if source.is_file() and source.stat().st_mtime > built + 1.0:
            sys.stderr.write(
                f"rpcbalancer: {source.relative_to(here.parent)} changed after it was "
                "compiled: running the source (`make compile` compiles it again)\n"
            )
            return True
    return False


if (os.environ.get("RPCBALANCER_NO_EXTENSIONS") or _stale()) and not any(
    isinstance(finder, _SourceFirst) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _SourceFirst())


def build() -> str:
    """``compiled`` when the request's way runs compiled, else ``interpreted``."""
    spec = importlib.util.find_spec(f"{__name__}.proxy.gateway")
    origin = spec.origin if spec is not None else None
    return "interpreted" if origin is None or origin.endswith(".py") else "compiled"
