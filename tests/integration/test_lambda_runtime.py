"""The deployment zip, run by AWS's runtime client (awslambdaric) against a Runtime API on
loopback, and invoked over HTTP: the loop Lambda runs, with only the zip and what the Lambda
Python runtime itself provides (the runtime client and boto3) on the path.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.lambda_package import build, find_python
from rpcbalancer.sim import Behaviour, FleetThread
from rpcbalancer.sim.lambda_api import RuntimeApi, decode

from ..apigw import original_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"
ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]

pytestmark = pytest.mark.slow


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


@pytest.fixture(scope="session")
def runtime_python() -> tuple[str, str]:
    """The Lambda runtime's Python (3.12) when this machine has it, else this interpreter."""
    found = find_python("3.12")
    if found is not None:
        return found, "3.12"
    return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"


def _pip_target(target: Path, version: str, *packages: str) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(target), "--platform", f"manylinux2014_{platform.machine()}",
            "--implementation", "cp", "--python-version", version, "--only-binary=:all:",
            *packages,
        ],
        check=True,
    )  # fmt: skip


@pytest.fixture(scope="session")
def task_root(tmp_path_factory: pytest.TempPathFactory, runtime_python: tuple[str, str]) -> Path:
    """The zip ``rpcbalancer lambda package`` builds for this machine, unpacked."""
    python, version = runtime_python
    out = tmp_path_factory.mktemp("lambda")
    built = build(out / "function.zip", arch=ARCH, python=version, compile_with=python)
    root = out / "task"
    with zipfile.ZipFile(built.path) as archive:
        archive.extractall(root)
    return root


@pytest.fixture(scope="session")
def runtime_site(tmp_path_factory: pytest.TempPathFactory, runtime_python: tuple[str, str]) -> Path:
    """What the Lambda Python runtime brings besides the function: its client and boto3."""
    target = tmp_path_factory.mktemp("runtime")
    _pip_target(target, runtime_python[1], "awslambdaric>=3", "boto3")
    return target


class Function:
    """One runtime process (``python -m awslambdaric handler``) polling a :class:`RuntimeApi`."""

    def __init__(
        self,
        handler: str,
        env: dict[str, str],
        *,
        python: str,
        task_root: Path,
        runtime_site: Path,
        log: Path,
    ) -> None:
        self.api = RuntimeApi(function_timeout=15)
        self.api.__enter__()
        self.log = log
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "LAMBDA_TASK_ROOT": str(task_root),
            "PYTHONPATH": f"{task_root}:{runtime_site}",
            "AWS_LAMBDA_FUNCTION_NAME": "rpcbalancer",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **env,
        }
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [python, "-S", "-m", "awslambdaric", handler],
            cwd=task_root,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def invoke(self, event: Any, timeout: float = 30.0) -> tuple[Any, bool]:
        """The function's result, and whether it was an error."""
        assert self.process.poll() is None, self.log.read_text()
        response = requests.post(self.api.invoke_url, json=event, timeout=timeout)
        assert response.status_code == 200, response.text
        return decode(response.content), "X-Amz-Function-Error" in response.headers

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.api.__exit__(None, None, None)
        self._log.close()


@pytest.fixture
def function(
    runtime_python: tuple[str, str], task_root: Path, runtime_site: Path, tmp_path: Path
) -> Iterator[Any]:
    started: list[Function] = []

    def start(handler: str, **env: str) -> Function:
        fn = Function(
            handler,
            env,
            python=runtime_python[0],
            task_root=task_root,
            runtime_site=runtime_site,
            log=tmp_path / f"function-{len(started)}.log",
        )
        started.append(fn)
        return fn

    yield start
    for fn in started:
        fn.stop()


@pytest.fixture
def fleet() -> Iterator[FleetThread]:
    with FleetThread({"a": Behaviour(latency=0.002), "b": Behaviour(latency=0.02)}) as f:
        yield f


def test_the_zip_runs_under_the_runtime_client_and_stays_warm(
    function: Any, fleet: FleetThread
) -> None:
    fn = function("rpcbalancer.aws_lambda.handler", RPCBALANCER_NODES=",".join(fleet.urls))
    event = fixture("http-api")
    for _ in range(30):
        result, failed = fn.invoke(event)
        assert not failed, result
        assert result["statusCode"] == 200
        assert json.loads(result["body"])["result"]["head_block_number"] > 0
    served = sum(
        n.counts["condenser_api.get_dynamic_global_properties"] for n in fleet.nodes.values()
    )
    assert served == 30
    assert fn.process.poll() is None  # one process served every invocation
    assert fn.api.polls >= 30
    assert not fn.api.init_errors

    original, failed = fn.invoke(
        original_event("POST", '{"jsonrpc":"2.0","method":"condenser_api.get_version","id":9}')
    )
    assert not failed
    assert original["id"] == 9
    assert original["__server__"] in fleet.urls

    unknown, failed = fn.invoke({"hello": "world"})
    assert not failed
    assert unknown["statusCode"] == 400


def test_the_runtime_reports_a_failing_canary_as_a_function_error(function: Any) -> None:
    fn = function("rpcbalancer.aws_lambda.canary_handler", RPCBALANCER_CONFIG="nodes: [")
    result, failed = fn.invoke(fixture("schedule"))
    assert failed
    assert result["errorType"] == "ConfigError"
    assert "not valid YAML" in result["errorMessage"]


def test_scheduled_canary_writes_dynamodb_and_the_balancer_routes_from_it(
    function: Any, fleet: FleetThread, dynamodb_endpoint: str
) -> None:
    store = f"dynamodb://health-{time.time_ns()}?region=us-east-1&endpoint={dynamodb_endpoint}"
    env = {"RPCBALANCER_NODES": ",".join(fleet.urls), "RPCBALANCER_STORE": store}
    canary = function("rpcbalancer.aws_lambda.canary_handler", **env)
    summary, failed = canary.invoke(fixture("schedule"))
    assert not failed, summary
    assert summary["ok"] == 2
    assert summary["store"].startswith("dynamodb://health-")

    balancer = function("rpcbalancer.aws_lambda.handler", **env)
    status = fixture("http-api")
    status.update(rawPath="/status.json", body=None, isBase64Encoded=False)
    status["requestContext"]["http"].update(method="GET", path="/status.json")
    result, failed = balancer.invoke(status)
    assert not failed, result
    doc = json.loads(result["body"])
    assert doc["balancer"]["strategy"] == "fastest"  # the canary's records are fresh
    assert all(n["head_block"] for n in doc["nodes"])
