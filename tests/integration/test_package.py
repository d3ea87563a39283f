"""The Python package: ``python -m build`` makes an sdist and a wheel that ``twine check``
passes, and the wheel installed in a fresh venv runs: ``rpcbalancer version``, and ``serve``
answering /version. The wheel is the build this suite runs: compiled (the modules on the
request's way, for this platform), or with ``RPCBALANCER_NO_EXTENSIONS`` the source alone (a
wheel for any platform); a machine that cannot compile builds the source alone too.

Building writes into the source tree (setuptools rewrites ``src/rpcbalancer.egg-info``; a
``pip install .`` or ``pip wheel .`` also leaves ``build/``), so it builds from a copy of the
tree. The fresh venv takes the dependencies from the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import rpcbalancer
from rpcbalancer import __version__
from rpcbalancer.sim import Behaviour, FleetThread, free_port, stop_process

from ..conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LOCAL = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "test-artifacts", "results", "findings", "*.db", "*.db-*", "*.so", "node_modules",
)  # fmt: skip
BUILD = rpcbalancer.build()
"""The build this suite runs, and the one its wheel must be."""


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel, built from a copy of the source tree."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=LOCAL)
    out = work / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, source)
    return out


def test_build_gives_an_sdist_and_a_wheel_twine_accepts(dist: Path) -> None:
    sdist = dist / f"rpcbalancer-{__version__}.tar.gz"
    (wheel,) = dist.glob("*.whl")
    assert sorted(dist.iterdir()) == sorted([sdist, wheel])
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    names = zipfile.ZipFile(wheel).namelist()
    assert "rpcbalancer/py.typed" in names
    assert "rpcbalancer/sim/__init__.py" in names  # the tests' and the demo's simulator
    assert "rpcbalancer/proxy/gateway.py" in names  # the source goes whatever the build
    compiled = [n for n in names if n.endswith(".so")]
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    if BUILD == "compiled":
        assert tag in wheel.name and "rpcbalancer/proxy/gateway" in " ".join(compiled)
        assert any(n.startswith("rpcbalancer__mypyc") for n in compiled)
    else:
        assert wheel.name.endswith("-py3-none-any.whl") and compiled == []
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
        assert f"rpcbalancer-{__version__}/pyproject.toml" in members
        assert f"rpcbalancer-{__version__}/setup.py" in members
        assert not any(m.endswith(".so") for m in members)


def test_a_machine_that_cannot_compile_installs_the_source(tmp_path: Path) -> None:
    """No working C compiler: the wheel is built all the same, with the source alone."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=LOCAL)
    env = {k: v for k, v in os.environ.items() if k != "RPCBALANCER_NO_EXTENSIONS"}
    env["CC"] = "false"  # a compiler that always fails
    out = run(
        sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source, env=env
    )
    assert "rpcbalancer: compiling failed" in out
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rpcbalancer/proxy/gateway.py" in names
    assert not any(n.endswith(".so") for n in names)


@pytest.fixture
def sim() -> Iterator[FleetThread]:
    with FleetThread({"sim": Behaviour()}) as fleet:
        yield fleet


def test_the_wheel_installs_and_serves_in_a_fresh_venv(
    dist: Path, sim: FleetThread, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    wheel = next(dist.glob("*.whl"))
    run(venv / "bin/pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    assert __version__ in run(venv / "bin/rpcbalancer", "version")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [venv / "bin/rpcbalancer", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "RPCBALANCER_NODES": sim.urls[0], "RPCBALANCER_STORE": "none"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                version = requests.get(f"{url}/version", timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert version.status_code == 200
        assert version.json()["name"] == "rpcbalancer"
        assert version.json()["version"] == __version__
        assert version.json()["build"] == BUILD  # the wheel's modules, as built
        body: dict[str, Any] = {
            "jsonrpc": "2.0",
            "method": "condenser_api.get_dynamic_global_properties",
            "id": 1,
        }
        answer = requests.post(url, json=body, timeout=10)
        assert answer.status_code == 200 and "result" in answer.json()
    finally:
        stop_process(server)
