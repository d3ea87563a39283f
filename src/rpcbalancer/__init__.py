"""rpcbalancer: a load balancer for blockchain JSON-RPC API nodes.

The modules on the request's way are compiled (mypyc) from this same source when the package
is installed where a C compiler exists; the source runs interpreted where not, and wherever
``RPCBALANCER_NO_EXTENSIONS`` is set (at install: nothing is compiled; at run time: the
compiled modules are not loaded, the source is). :func:`build` says which runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
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


if os.environ.get("RPCBALANCER_NO_EXTENSIONS") and not any(
    isinstance(finder, _SourceFirst) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _SourceFirst())


def build() -> str:
    """``compiled`` when the request's way runs compiled, else ``interpreted``."""
    spec = importlib.util.find_spec(f"{__name__}.proxy.gateway")
    origin = spec.origin if spec is not None else None
    return "interpreted" if origin is None or origin.endswith(".py") else "compiled"
