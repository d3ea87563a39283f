"""The whole deployment in a local AWS emulator: deploy/aws/template.yaml deployed by
``sam deploy`` (S3 upload, CloudFormation change set, the SAM transform) into ministack, called through the HTTP API, the Function URL and
the REST API, while the scheduled canary writes DynamoDB and the balancer routes from it.

ministack runs from its own venv (CI installs it; ``RPCBALANCER_MINISTACK`` or ``ministack`` on
the PATH). It runs Python functions with its own interpreter, so the zip is built for that
interpreter's version. Known gaps of the emulator are listed in the README ("Deploy to AWS").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.hosts.lambda_package import build
from rpcbalancer.sim import Behaviour, FleetThread, stop_process

from ..apigw import TEMPLATE
from ..conftest import free_port, require_tool
from ..services import missing, wait_port

pytestmark = pytest.mark.slow

RPC = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


class Ministack:
    def __init__(self, program: str, folder: Path) -> None:
        self.program = program
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = folder / "ministack.log"
        self.env = {
            **os.environ,
            "GATEWAY_PORT": str(self.port),
            "BIND_HOST": "127.0.0.1",
            "MINISTACK_HOST": "localhost",
            "TMPDIR": str(folder),
            "S3_DATA_DIR": str(folder / "s3"),
            "LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def python(self) -> str:
        """The interpreter ministack runs (and runs Python functions with)."""
        first = Path(self.program).read_text().splitlines()[0]
        return first.removeprefix("#!").strip()

    def start(self) -> Ministack:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.program], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.port, self.proc, timeout=60)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=20)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def url(self, public: str) -> tuple[str, dict[str, str]]:
        """An AWS URL from the stack's outputs, as a request to the emulator: the same path,
        the host moved to the emulator's virtual host names."""
        host, _, path = public.removeprefix("https://").partition("/")
        host = re.sub(r"\.execute-api\..*$", ".execute-api.localhost", host)
        return f"{self.endpoint}/{path}", {"Host": f"{host}:{self.port}"}


@pytest.fixture
def ministack(tmp_path: Path) -> Iterator[Ministack]:
    program = os.environ.get("RPCBALANCER_MINISTACK") or shutil.which("ministack")
    if program is None:
        missing("ministack (pip install 'ministack[full]' in a venv of its own)")
        raise AssertionError("unreachable")
    emulator = Ministack(program, tmp_path).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def deploy(aws: Ministack, zip_path: Path, nodes: list[str], folder: Path) -> dict[str, str]:
    """The README's ``sam deploy``, pointed at the emulator by ``AWS_ENDPOINT_URL``: it uploads
    the zip to S3, makes a change set of the template, and executes it."""
    sam = require_tool("sam")
    layout = folder / "checkout"
    (layout / "deploy" / "aws").mkdir(parents=True)
    (layout / "dist").mkdir()
    shutil.copy(TEMPLATE, layout / "deploy" / "aws" / "template.yaml")
    shutil.copy(zip_path, layout / "dist" / "rpcbalancer-lambda.zip")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SAM_CLI_TELEMETRY": "0",
        "HOME": str(folder),
    }
    done = subprocess.run(
        [
            sam, "deploy", "--template-file", "template.yaml", "--stack-name", "rpcbalancer",
            "--resolve-s3", "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND",
            "--no-confirm-changeset", "--no-progressbar", "--parameter-overrides",
            f"Nodes={','.join(nodes)}", "OriginalRestApi=true", "Architecture=x86_64",
        ],
        cwd=layout / "deploy" / "aws",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stack = aws.client("cloudformation").describe_stacks(StackName="rpcbalancer")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def call(aws: Ministack, public: str, body: Any = None, path: str = "") -> requests.Response:
    url, headers = aws.url(public)
    if body is None:
        return requests.get(url + path, headers=headers, timeout=30)
    return requests.post(url + path, json=body, headers=headers, timeout=30)


@pytest.mark.timeout(300)  # the schedule's first round comes a minute after deployment
def test_template_deploys_and_serves_with_the_scheduled_canary(
    ministack: Ministack, tmp_path: Path
) -> None:
    version = subprocess.run(
        [ministack.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    built = build(tmp_path / "function.zip", arch="x86_64", python=version)
    with FleetThread({"a": Behaviour(latency=0.002), "b": Behaviour(latency=0.03)}) as fleet:
        outputs = deploy(ministack, built.path, fleet.urls, tmp_path)

        # The recommended fronts: the HTTP API and the Function URL.
        for front in ("HttpApiUrl", "FunctionUrl"):
            response = call(ministack, outputs[front], {**RPC, "id": 4})
            assert response.status_code == 200, (front, response.text)
            assert response.json()["id"] == 4
            assert response.json()["result"]["head_block_number"] > 0
            assert response.headers["x-rpc-node"] in fleet.urls

        # The original REST API reaches the same function; ministack does not apply
        # non-proxy mapping templates (a known gap), so its event is a proxy one and the
        # function's reply comes back verbatim, as a non-proxy integration returns it.
        original = call(ministack, outputs["OriginalApiUrl"], {**RPC, "id": 5})
        assert original.status_code == 200
        assert original.json()["statusCode"] == 200

        status = call(ministack, outputs["HttpApiUrl"], path="status.json").json()
        assert status["balancer"]["strategy"] == "race"  # no canary round yet

        rules = ministack.client("events").list_rules()["Rules"]
        assert [r["ScheduleExpression"] for r in rules] == ["rate(1 minute)"]

        # The schedule fires a minute after the rule was made: wait for the canary's records.
        table = ministack.client("dynamodb")
        name = outputs["HealthTableName"]
        deadline = time.monotonic() + 150
        latest: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(latest) < 2:
            time.sleep(2)
            latest = table.query(
                TableName=name,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": "latest"}},
            )["Items"]
        assert {item["sk"]["S"] for item in latest} == set(fleet.urls), ministack.log.read_text()[
            -3000:
        ]

        # The balancer reads them (its view refreshes every 15 s) and leaves the race.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            status = call(ministack, outputs["HttpApiUrl"], path="status.json").json()
            if status["balancer"]["strategy"] == "fastest":
                break
            time.sleep(2)
        assert status["balancer"]["strategy"] == "fastest"
        assert all(node["head_block"] for node in status["nodes"])
        served = call(ministack, outputs["FunctionUrl"], {**RPC, "id": 6})
        assert served.json()["id"] == 6
