"""The compiled build: the modules on the request's way, compiled with mypyc from their source.

Everything else about the package is in pyproject.toml. The modules below are compiled when
the package is built where mypyc and a C compiler work; the build goes on interpreted (the same
source, nothing compiled) when compiling fails, and compiles nothing when
``RPCBALANCER_NO_EXTENSIONS`` is set. At run time the same variable loads the source instead
of what was compiled (see ``src/rpcbalancer/__init__.py``). ARCHITECTURE.md says why these.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "jsonrpc.py",
    "messages.py",
    "callbacks.py",
    "failsafe/breaker.py",
    "failsafe/budget.py",
    "failsafe/hedge.py",
    "failsafe/slots.py",
    "fleet/address.py",
    "fleet/estimators.py",
    "fleet/latency.py",
    "fleet/nodes.py",
    "fleet/fleet.py",
    "fleet/policies/__init__.py",
    "fleet/policies/base.py",
    "fleet/policies/fastest.py",
    "fleet/policies/first.py",
    "fleet/policies/ip_hash.py",
    "fleet/policies/latest_version.py",
    "fleet/policies/least_conn.py",
    "fleet/policies/max_block.py",
    "fleet/policies/race.py",
    "fleet/policies/random_choice.py",
    "fleet/policies/round_robin.py",
    "fleet/policies/weighted.py",
    "upstream/wire.py",
    "upstream/connection.py",
    "upstream/pool.py",
    "health/chains/base.py",
    "health/chains/steem.py",
    "health/chains/evm.py",
    "health/chains/call.py",
    "cache/policy.py",
    "cache/memory.py",
    "cache/__init__.py",
    "observe/counters.py",
    "observe/accesslog.py",
    "proxy/server.py",
    "proxy/h1wire.py",
    "proxy/overload.py",
    "proxy/context.py",
    "proxy/gateway.py",
    "proxy/admission.py",
    "proxy/clientip.py",
    "proxy/access.py",
    "proxy/ratelimit.py",
    "proxy/plan.py",
    "proxy/routes.py",
    "proxy/lookup.py",
    "proxy/coalesce.py",
    "proxy/forward.py",
    "proxy/request.py",
    "proxy/group.py",
    "proxy/router.py",
    "proxy/states.py",
    "proxy/forwarding.py",
    "proxy/learn.py",
    "proxy/answer.py",
    "proxy/accounting.py",
    "proxy/batch.py",
]
"""The request's way, as files under ``src/rpcbalancer``."""

MYPY_OPTIONS = [
    "--config-file=",  # not pyproject.toml's: its pydantic plugin needs pydantic in the build
    "--python-version=3.11",
    "--ignore-missing-imports",  # the build's environment may lack the dependencies' stubs
    "--follow-imports=silent",  # the modules left interpreted are read for their types only
    "--no-warn-unused-ignores",
]


class CompiledBuildExt(build_ext):
    """Compiles the modules of :data:`COMPILED` (mypyc runs when the build does, once, not
    whenever setup.py is read). When any module fails to compile, none is installed (a module
    compiled without the library it shares with the others would not import): the source
    serves, with a warning."""

    def finalize_options(self) -> None:
        modules = self.distribution.ext_modules or []
        if any(ext.name == PLACEHOLDER for ext in modules):
            self.distribution.ext_modules = compiled()
        super().finalize_options()

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            print(f"rpcbalancer: compiling failed ({exc}); installing interpreted", file=sys.stderr)


_COMPILED: list[Extension] | None = None


def compiled() -> list[Extension]:
    """The compiled modules' extensions (mypyc's C, made once per build)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = _mypycify()
    return _COMPILED


def _mypycify() -> list[Extension]:
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"rpcbalancer: no mypyc ({exc}); installing interpreted", file=sys.stderr)
        return []
    root = Path("src", "rpcbalancer")
    paths = [str(root / name) for name in COMPILED]
    try:
        return list(mypycify([*MYPY_OPTIONS, *paths], group_name="rpcbalancer"))
    except BaseException as exc:  # mypyc exits on a type error: the source still serves
        print(f"rpcbalancer: mypyc failed ({exc}); installing interpreted", file=sys.stderr)
        return []


PLACEHOLDER = "rpcbalancer._compiled"
"""Stands for the compiled modules until the build runs (so that setuptools knows there are
some, and builds a wheel for this platform)."""

setup(
    ext_modules=[] if os.environ.get("RPCBALANCER_NO_EXTENSIONS") else [Extension(PLACEHOLDER, [])],
    cmdclass={"build_ext": CompiledBuildExt},
)
