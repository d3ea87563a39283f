"""The container image, run with podman: it serves a simulated node through the balancer, as
a non-root user, with its SQLite store in the image's volume.

The image is the one ``.ci/container`` built when ``RPCBALANCER_TEST_IMAGE`` names it (with
``CONTAINERS_STORAGE_CONF``/``CONTAINERS_CONF`` pointing podman at its store: the lines that
script prints); otherwise this module runs the script itself, into a temporary store (a
minute or two: debootstrap, then the build). The containers share the host's network, so
the simulated node on 127.0.0.1 is theirs too; each one is removed with its volume.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread, free_port

from ..conftest import ROOT, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


@dataclass
class Podman:
    image: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman, and the image to run: the one named by RPCBALANCER_TEST_IMAGE, else one built
    now by .ci/container."""
    require_tool("podman")
    if os.environ.get("RPCBALANCER_TEST_IMAGE"):
        return Podman(os.environ["RPCBALANCER_TEST_IMAGE"])
    require_tool("buildah")
    root = tmp_path_factory.mktemp("containers")
    env = {**os.environ, "RPCBALANCER_CONTAINER_ROOT": str(root)}
    built = subprocess.run(
        [str(ROOT / ".ci" / "container")], env=env, capture_output=True, text=True, timeout=500
    )
    assert built.returncode == 0, built.stderr
    for word in shlex.split(built.stdout.strip())[1:]:  # export NAME=VALUE ...
        name, _, value = word.partition("=")
        env[name] = value
    return Podman(env["RPCBALANCER_TEST_IMAGE"], env)


@pytest.fixture
def sim() -> Iterator[FleetThread]:
    with FleetThread({"sim": Behaviour(latency=0.002)}) as fleet:
        yield fleet


class Container:
    """One ``podman run -d`` of the image on a free loopback port; removed at teardown."""

    def __init__(self, podman: Podman, *args: str, env: dict[str, str]) -> None:
        self.podman = podman
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"rpcbalancer-test-{self.port}"
        env = {"RPCBALANCER_PORT": str(self.port), **env}
        flags = [f"--env={k}={v}" for k, v in env.items()]
        podman("run", "-d", "--name", self.name, "--network", "host", *flags, *args, podman.image)

    def wait_healthy(self, timeout: float = 60.0) -> requests.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = requests.get(self.url + "/health", timeout=2)
                if answer.status_code == 200:
                    return answer
            except requests.ConnectionError:
                pass
            running = self.podman("inspect", "--format", "{{.State.Running}}", self.name)
            if running.stdout.strip() != "true":
                pytest.fail(f"{self.name} stopped:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not healthy within {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def exec(self, *command: str) -> str:
        return self.podman("exec", self.name, *command).stdout.strip()

    def logs(self) -> str:
        done = self.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        self.podman("rm", "--force", "--volumes", "--time", "5", self.name, check=False)


@pytest.fixture
def container(podman: Podman) -> Iterator[Callable[..., Container]]:
    """A factory of containers of the image, each removed (with its volume) at teardown."""
    started: list[Container] = []

    def start(*args: str, env: dict[str, str]) -> Container:
        started.append(Container(podman, *args, env=env))
        return started[-1]

    yield start
    for one in started:
        one.remove()


def test_the_image_balances_a_node_as_a_non_root_user(
    container: Callable[..., Container], sim: FleetThread
) -> None:
    # hardened as a careful operator would run it: the image must not need more
    box = container(
        "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
        env={"RPCBALANCER_NODES": sim["sim"].url},
    )  # fmt: skip
    health = box.wait_healthy().json()
    assert health["usable"] == 1

    answer = requests.post(box.url, json={**DGP, "id": 7}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["id"] == 7 and "head_block_number" in answer.json()["result"]
    assert answer.headers["x-rpc-node"] == sim["sim"].url

    assert box.exec("id", "-u") not in ("", "0")
    assert box.exec("id", "-u") == "10001"
    # the baked config's store, in the image's volume, written by that user
    assert box.exec("stat", "-c", "%u %s", "/var/lib/rpcbalancer/health.db").startswith("10001 ")
    # the image's HEALTHCHECK (GET /health from inside) says healthy
    assert box.podman("healthcheck", "run", box.name, check=False).returncode == 0


def test_config_from_a_mounted_file_or_the_environment(
    container: Callable[..., Container], sim: FleetThread, tmp_path: Path
) -> None:
    mounted = tmp_path / "config.yaml"
    mounted.write_text(
        f"nodes: [{sim['sim'].url}]\nstrategy: round_robin\nstore: sqlite:///mounted.db\n"
        "listen:\n  host: 127.0.0.1\n  port: ${RPCBALANCER_PORT}\n"
    )
    mounted.chmod(0o644)  # the container's user is not the file's owner
    by_file = container(f"--volume={mounted}:/etc/rpcbalancer/config.yaml:ro", env={})
    text = {
        "nodes": [sim["sim"].url],
        "strategy": "first",
        "listen": {"port": "${RPCBALANCER_PORT}"},  # the text replaces the baked file whole
    }
    by_text = container(env={"RPCBALANCER_CONFIG": json.dumps(text)})
    for box, strategy in ((by_file, "round_robin"), (by_text, "first")):
        box.wait_healthy()
        assert requests.get(box.url + "/version", timeout=5).json()["strategy"] == strategy
    # a relative SQLite path lands in the volume (the working directory)
    assert "mounted.db" in by_file.exec("ls", "/var/lib/rpcbalancer").split()
