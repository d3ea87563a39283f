"""The deployment zip, run by AWS's runtime client (awslambdaric) against a Runtime API on
loopback, and invoked over HTTP: the loop Lambda runs, with only the zip and what the Lambda
Python runtime itself provides (the runtime client and boto3) on the path.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpcbalancer
from rpcbalancer.hosts.lambda_package import Built, PackageError, build, find_python
from rpcbalancer.sim import Behaviour, FleetThread
from rpcbalancer.sim.lambda_api import LambdaFunction, install_runtime

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


@pytest.fixture(scope="session")
def built_zip(tmp_path_factory: pytest.TempPathFactory, runtime_python: tuple[str, str]) -> Built:
    """The zip ``rpcbalancer lambda package`` builds for this machine."""
    python, version = runtime_python
    out = tmp_path_factory.mktemp("lambda")
    return build(out / "function.zip", arch=ARCH, python=version, compile_with=python)


@pytest.fixture(scope="session")
def task_root(tmp_path_factory: pytest.TempPathFactory, built_zip: Built) -> Path:
    """That zip, unpacked."""
    root = tmp_path_factory.mktemp("task")
    with zipfile.ZipFile(built_zip.path) as archive:
        archive.extractall(root)
    return root


@pytest.fixture(scope="session")
def runtime_site(tmp_path_factory: pytest.TempPathFactory, runtime_python: tuple[str, str]) -> Path:
    target = tmp_path_factory.mktemp("runtime")
    install_runtime(target, runtime_python[1])
    return target


@pytest.fixture
def function(
    runtime_python: tuple[str, str], task_root: Path, runtime_site: Path, tmp_path: Path
) -> Iterator[Any]:
    started: list[LambdaFunction] = []

    def start(handler: str, **env: str) -> LambdaFunction:
        fn = LambdaFunction(
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
    verdicts = []
    for _ in range(30):
        result, failed = fn.invoke(event)
        assert not failed, result
        assert result["statusCode"] == 200
        assert json.loads(result["body"])["result"]["head_block_number"] > 0
        verdicts.append({k.lower(): v for k, v in result["headers"].items()}["x-cache"])
    served = sum(
        n.counts["condenser_api.get_dynamic_global_properties"] for n in fleet.nodes.values()
    )
    # Warm: what one invocation learned serves the next (the answer cache, on by default,
    # answers repeats of the dynamic global properties for a second).
    assert served == verdicts.count("miss") >= 1 and verdicts.count("hit") >= 1
    assert verdicts.count("hit") + verdicts.count("miss") == 30
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

    metrics = fixture("http-api")
    metrics.update(rawPath="/metrics", body=None, isBase64Encoded=False)
    metrics["requestContext"]["http"].update(method="GET", path="/metrics")
    scraped, failed = fn.invoke(metrics)  # prometheus-client is in the zip
    assert not failed and scraped["statusCode"] == 200
    assert "rpcbalancer_requests_total" in scraped["body"]


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


def test_the_arm64_package_for_the_template(tmp_path: Path) -> None:
    built = build(tmp_path / "arm64.zip", arch="arm64", python="3.12")
    with zipfile.ZipFile(built.path) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {
        "rpcbalancer",
        "mangum",
        "pydantic",
        "orjson",
        "httptools",
        "yaml",
        "prometheus_client",
    } <= tops
    assert not tops & {"boto3", "botocore", "uvloop", "aiohttp", "typer", "rich"}
    assert not any(name.startswith("rpcbalancer/sim/") for name in names)
    binaries = [n for n in names if n.endswith(".so")]
    assert binaries and all("aarch64" in n and "312" in n for n in binaries), binaries
    # Nothing here is compiled for arm64's Python 3.12: the source goes, and the zip says so.
    assert built.modules == "interpreted"
    assert not any(n.startswith("rpcbalancer") for n in binaries)
    assert built.size < 10 * 1024 * 1024
    with pytest.raises(PackageError, match=r"not for Python 3\.12 on manylinux2014_aarch64"):
        build(tmp_path / "x.zip", arch="arm64", wheel=_wheel(tmp_path, "cp311-cp311-linux_x86_64"))
    if built.compiled_with is not None:  # a python3.12 was found: byte-code ships too
        assert "rpcbalancer/__pycache__/aws_lambda.cpython-312.pyc" in names


def test_the_zip_says_how_its_modules_run_and_runs_so(
    function: Any, fleet: FleetThread, built_zip: Built, runtime_python: tuple[str, str]
) -> None:
    """The modules compiled here go in the zip when they fit the target (this machine's
    architecture and Python, manylinux2014's C library); else the source does. Either way
    the zip says which, and the function's ``/version`` agrees."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    compiled = rpcbalancer.build() == "compiled" and runtime_python[1] == here
    with zipfile.ZipFile(built_zip.path) as archive:
        ours = [n for n in archive.namelist() if n.startswith("rpcbalancer") and n.endswith(".so")]
        assert "rpcbalancer/proxy/gateway.py" in archive.namelist()  # the source, always
    assert built_zip.modules.startswith("compiled") == compiled == bool(ours)
    fn = function("rpcbalancer.aws_lambda.handler", RPCBALANCER_NODES=",".join(fleet.urls))
    event = fixture("http-api")
    event["rawPath"], event["body"] = "/version", None
    event["requestContext"]["http"].update(method="GET", path="/version")
    result, failed = fn.invoke(event)
    assert not failed and result["statusCode"] == 200, result
    assert json.loads(result["body"])["build"] == ("compiled" if compiled else "interpreted")


def _wheel(folder: Path, tags: str) -> Path:
    """A wheel file named with ``tags`` (its contents never read: refused by its name)."""
    path = folder / f"rpcbalancer-0.1.0-{tags}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rpcbalancer/__init__.py", "")
    return path
