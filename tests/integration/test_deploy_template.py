"""deploy/aws/template.yaml: valid for CloudFormation linters and SAM, and least-privilege."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..apigw import TEMPLATE, load_template, mapping_template
from ..conftest import require_tool


def test_cfn_lint_passes() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_sam_validate_lint_passes(tmp_path: Path) -> None:
    sam = require_tool("sam")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sam, "validate", "--lint", "-t", str(TEMPLATE), "--region", "us-east-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_functions_canary_schedule_and_table() -> None:
    resources = load_template()["Resources"]
    balancer = resources["BalancerFunction"]["Properties"]
    canary = resources["CanaryFunction"]["Properties"]
    assert balancer["Handler"] == "rpcbalancer.aws_lambda.handler"
    assert canary["Handler"] == "rpcbalancer.aws_lambda.canary_handler"
    assert canary["Events"]["EveryMinute"]["Properties"]["Schedule"] == "rate(1 minute)"
    glob = load_template()["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    table = resources["HealthTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires", "Enabled": True}
    assert balancer["FunctionUrlConfig"]["AuthType"] == "NONE"


def test_the_balancer_may_only_read_the_table() -> None:
    resources = load_template()["Resources"]
    read = resources["BalancerFunction"]["Properties"]["Policies"][0]["Statement"]
    write = resources["CanaryFunction"]["Properties"]["Policies"][0]["Statement"]
    actions = {a for s in read for a in s["Action"]}
    assert actions == {"dynamodb:DescribeTable", "dynamodb:Query"}
    assert all(s["Resource"] == "HealthTable.Arn" for s in read + write)
    assert "dynamodb:PutItem" in {a for s in write for a in s["Action"]}
    assert not any("*" in a for s in read + write for a in s["Action"])


def test_rest_api_uses_the_original_mapping_template() -> None:
    get, post = mapping_template("get"), mapping_template("post")
    assert get == post
    assert "\"body-json\" : $input.json('$')" in post
