"""The Python package: ``python -m build`` makes an sdist and a wheel that ``twine check``
passes, and the wheel installed in a fresh venv runs: ``rpcbalancer version``, and ``serve``
answering /version.

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

from rpcbalancer import __version__
from rpcbalancer.sim import Behaviour, FleetThread, free_port, stop_process

from ..conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LOCAL = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "test-artifacts", "results", "findings", "*.db", "*.db-*",
)  # fmt: skip


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


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
    wheel = dist / f"rpcbalancer-{__version__}-py3-none-any.whl"
    assert sorted(dist.iterdir()) == sorted([sdist, wheel])
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    names = zipfile.ZipFile(wheel).namelist()
    assert "rpcbalancer/py.typed" in names
    assert "rpcbalancer/sim/__init__.py" in names  # the tests' and the demo's simulator
    with tarfile.open(sdist) as tar:
        assert f"rpcbalancer-{__version__}/pyproject.toml" in tar.getnames()


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
        body: dict[str, Any] = {
            "jsonrpc": "2.0",
            "method": "condenser_api.get_dynamic_global_properties",
            "id": 1,
        }
        answer = requests.post(url, json=body, timeout=10)
        assert answer.status_code == 200 and "result" in answer.json()
    finally:
        stop_process(server)
