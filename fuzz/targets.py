"""Fuzz targets: functions that take bytes and must never raise (an exception is a finding).

Each target also checks that what it got back is well formed: JSON-RPC answers parse as
JSON with the right shape; the config loader fails only with ``ConfigError``; the Lambda
host answers every event with something Lambda can serialise. Run by ``fuzz/run.py``
(atheris, coverage-guided) and replayed on a corpus by the test suite.
"""

from __future__ import annotations

import json
from typing import Any

from rpcbalancer import jsonrpc
from rpcbalancer.config import from_mapping, read_yaml
from rpcbalancer.errors import ConfigError


def jsonrpc_parse(data: bytes) -> None:
    result = jsonrpc.parse(data, max_batch=50, max_depth=16)
    if isinstance(result, jsonrpc.RpcProblem):
        doc = json.loads(result.body())
        assert doc["jsonrpc"] == "2.0" and isinstance(doc["error"]["code"], int)
        return
    assert len(result.methods) == len(result.ids)
    assert len(result.methods) + len(result.rejected) >= 1
    if result.rejected:
        answers = json.loads(jsonrpc.dumps(jsonrpc.rejected_answers(result)))
        assert all(a["error"]["code"] in (-32600, -32601) for a in answers)
    if result.body is not None:
        assert isinstance(json.loads(result.body), list)
    json.loads(jsonrpc.error_body_for(result, jsonrpc.NO_NODE, "x"))


def config_load(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        raw = read_yaml(lambda: text, "fuzzed config")
        from_mapping(raw, env={"A": "1", "SECRET": "s3cr3t"}, source="fuzz")
    except ConfigError as exc:
        if "s3cr3t" in str(exc):  # a value from the environment is never echoed
            raise AssertionError(f"a secret in a config error: {exc}") from None


_HOST: Any = None


def lambda_event(data: bytes) -> None:
    """An event (JSON from the fuzzer, or the fuzzer's bytes as a body) through the handler,
    with one node that refuses connections: every answer must be serialisable."""
    global _HOST
    if _HOST is None:
        from rpcbalancer.aws_lambda import LambdaHost, lambda_config

        quick = {"connect": 0.2, "per_try": 0.2, "total": 0.5}
        config = json.dumps({"access_log": {"enabled": False}, "timeouts": quick})
        env = {"RPCBALANCER_NODES": "http://127.0.0.1:9", "RPCBALANCER_CONFIG": config}
        _HOST = LambdaHost(lambda_config(env))
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        event = {
            "version": "2.0",
            "rawPath": "/",
            "requestContext": {"http": {"method": "POST", "path": "/", "sourceIp": "1.2.3.4"}},
            "headers": {},
            "body": data.decode("latin-1"),
            "isBase64Encoded": False,
        }
    result = _HOST.invoke(event, None)
    json.dumps(result)


TARGETS = {"jsonrpc_parse": jsonrpc_parse, "config_load": config_load, "lambda_event": lambda_event}
