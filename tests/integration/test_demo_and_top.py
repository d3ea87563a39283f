"""``rpcbalancer demo`` (the simulated fleet, a balancer, light traffic) and ``rpcbalancer
top`` reading it, as a newcomer would run them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ..conftest import free_port

pytestmark = pytest.mark.slow


@pytest.mark.timeout(90)
def test_demo_routes_around_bad_nodes_and_top_shows_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "rpcbalancer", "demo", "--port", str(port), "--rate", "40",
         "--duration", "60"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        status: dict = {}
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                status = requests.get(f"{url}/status.json", timeout=2).json()
            except requests.RequestException:
                continue
            nodes = {n["name"]: n for n in status["nodes"]}
            if status["balancer"]["requests"] > 300 and nodes["lagging"]["state"] == "excluded":
                break
        nodes = {n["name"]: n for n in status["nodes"]}
        assert nodes["lagging"]["state"] == "excluded"
        assert "blocks behind" in nodes["lagging"]["reason"]
        assert nodes["lagging"]["share"] == 0
        assert nodes["fast"]["share"] > 0.6  # the fast node carries the traffic
        assert nodes["fast"]["share"] > nodes["flaky"]["share"]
        assert status["balancer"]["choice"] == "fast"
        assert requests.get(f"{url}/status", timeout=2).status_code == 200

        top = subprocess.run(
            [sys.executable, "-m", "rpcbalancer", "top", "--url", url, "--once"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert top.returncode == 0, top.stderr
        for name in ("fast", "slow", "flaky", "lagging"):
            assert name in top.stdout
        assert "▶ fast" in top.stdout
        assert "blocks behind" in top.stdout
    finally:
        demo.terminate()
        demo.wait(20)
        log.close()
    banner = (tmp_path / "demo.log").read_text()
    assert f"{url}/status" in banner


def test_top_says_when_it_cannot_read_the_balancer() -> None:
    top = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpcbalancer",
            "top",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert top.returncode == 2
    assert "cannot read" in top.stdout
