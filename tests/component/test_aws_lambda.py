"""The Lambda handler, in process, on every event shape, against the fake node fleet.

Events come from ``sam local generate-event`` (tests/fixtures/lambda), a Function URL event
written after AWS's documentation, and the original design's mapping template rendered from
deploy/aws/template.yaml by a Velocity engine (tests/apigw.py).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rpcbalancer.aws_lambda import LambdaHost, event_kind, lambda_config
from rpcbalancer.errors import ConfigError
from rpcbalancer.hosts import aws_lambda
from rpcbalancer.sim import Behaviour, FleetThread

from ..apigw import original_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"
RPC = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def multi_value_alb() -> dict[str, Any]:
    """The ALB event when the target group has multi-value headers turned on."""
    event = fixture("alb")
    event["multiValueHeaders"] = {k: [v] for k, v in event.pop("headers").items()}
    event["multiValueQueryStringParameters"] = {
        k: [v] for k, v in event.pop("queryStringParameters").items()
    }
    return event


def with_body(event: dict[str, Any], body: bytes, *, path: str | None = None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    if event.get("isBase64Encoded"):
        event["body"] = base64.b64encode(body).decode()
    else:
        event["body"] = body.decode()
    if path is not None:
        if "rawPath" in event:
            event["rawPath"] = event["requestContext"]["http"]["path"] = path
        else:
            event["path"] = path
    return event


def get(event: dict[str, Any], path: str) -> dict[str, Any]:
    event = with_body(event, b"", path=path)
    if "rawPath" in event:
        event["requestContext"]["http"]["method"] = "GET"
    else:
        event["httpMethod"] = "GET"
    event["body"] = None
    event["isBase64Encoded"] = False
    return event


SHAPES: dict[str, Callable[[], dict[str, Any]]] = {
    "rest-proxy": lambda: fixture("rest-proxy"),
    "http-api": lambda: fixture("http-api"),
    "function-url": lambda: fixture("function-url"),
    "alb": lambda: fixture("alb"),
    "alb-multi-value": multi_value_alb,
}


class Context:
    """What the handler reads of Lambda's context object."""

    def __init__(self, remaining: float = 15.0) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = "rpcbalancer"
        self._deadline = time.monotonic() + remaining

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def header(result: dict[str, Any], name: str) -> str | None:
    if result.get("multiValueHeaders"):
        values = {k.lower(): v for k, v in result["multiValueHeaders"].items()}.get(name)
        return values[0] if values else None
    return {k.lower(): v for k, v in (result.get("headers") or {}).items()}.get(name)


def body_of(result: dict[str, Any]) -> Any:
    raw = result["body"]
    if result.get("isBase64Encoded"):
        raw = base64.b64decode(raw)
    return json.loads(raw)


@pytest.fixture
def fleet() -> Iterator[FleetThread]:
    with FleetThread({"fast": Behaviour(latency=0.001), "slow": Behaviour(latency=0.03)}) as f:
        yield f


@pytest.fixture
def make_host(fleet: FleetThread) -> Iterator[Callable[..., LambdaHost]]:
    hosts: list[LambdaHost] = []

    def make(env: dict[str, str] | None = None, **config: Any) -> LambdaHost:
        environ = {"RPCBALANCER_NODES": ",".join(fleet.urls), **(env or {})}
        if config:
            environ["RPCBALANCER_CONFIG"] = json.dumps(config)
        host = LambdaHost(lambda_config(environ))
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_http_event_shape_is_balanced(
    shape: str, fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    result = host.invoke(SHAPES[shape](), Context())
    assert result["statusCode"] == 200, result
    doc = body_of(result)
    assert doc["id"] == 1
    assert doc["result"]["head_block_number"] > 0
    assert header(result, "x-rpc-node") in fleet.urls
    assert header(result, "access-control-allow-origin") == "*"


def test_function_url_client_address_reaches_the_node(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    result = host.invoke(fixture("function-url"), Context())
    served = next(n for n in fleet.nodes.values() if n.url == header(result, "x-rpc-node"))
    assert served.last_headers["X-Forwarded-For"].endswith("203.0.113.7")


def test_control_routes_answer_through_the_http_api(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    health = host.invoke(get(fixture("http-api"), "/health"), Context())
    assert health["statusCode"] == 200
    assert {n["name"] for n in body_of(health)["nodes"]} == set(fleet.urls)
    missing = host.invoke(get(fixture("rest-proxy"), "/nope"), Context())
    assert missing["statusCode"] == 404
    assert body_of(missing)["error"]["code"] == -32601


def test_original_mapping_template_post_answers_the_json_with_server_and_version(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    event = original_event("POST", json.dumps({**RPC, "id": 7}))
    assert event_kind(event) == "original"
    doc = host.invoke(event, Context())
    assert doc["id"] == 7
    assert doc["result"]["head_block_number"] > 0
    assert doc["__server__"] in fleet.urls
    # A fresh container races without a store: no probe has read the version, so the
    # winner is asked, as the original design did; its whole answer is __version__.
    assert doc["__version__"]["result"]["blockchain_version"] == "0.23.1"
    assert doc["__version__"]["jsonrpc"] == "2.0"


def test_original_mapping_template_version_failure_is_its_text(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    for name in fleet.nodes:
        fleet.set(name, fail_methods="get_version")
    host = make_host()
    doc = host.invoke(original_event("POST", json.dumps({**RPC, "id": 8})), Context())
    assert doc["id"] == 8 and doc["result"]["head_block_number"] > 0
    assert isinstance(doc["__version__"], str)
    assert "get_version failed: HTTP 503" in doc["__version__"]


def test_original_mapping_template_empty_body_is_a_get(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    event = original_event("POST", "")
    assert event["body-json"] == {}
    doc = host.invoke(event, Context())
    assert doc["status"] == "OK"  # the node's GET / page
    assert doc["__server__"] in fleet.urls
    served = next(n for n in fleet.nodes.values() if n.url == doc["__server__"])
    assert served.counts["GET /"] >= 1


def test_original_mapping_template_failure_has_the_original_shape(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host(timeouts={"per_try": 0.5, "total": 2})
    for name in fleet.nodes:
        fleet.kill(name)
    result = host.invoke(original_event("POST", json.dumps({**RPC, "id": 3})), Context())
    assert result["statusCode"] in (502, 503)
    assert result["headers"]["Access-Control-Allow-Origin"] == "*"
    assert "no-cache" in result["headers"]["Cache-Control"]
    error = json.loads(result["body"])
    assert error["id"] == 3
    assert "error" in error


def test_direct_invocation_with_a_jsonrpc_payload(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    single = host.invoke({**RPC, "id": "abc"}, Context())
    assert single["id"] == "abc"
    assert single["result"]["head_block_number"] > 0
    batch = host.invoke([{**RPC, "id": 1}, {**RPC, "id": 2}], Context())
    assert [m["id"] for m in batch] == [1, 2]
    big = host.invoke({**RPC, "id": 2**70}, Context())
    assert big["id"] == 2**70  # exact beyond 64 bits, both ways


def test_scheduled_event_runs_a_canary_round(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host()
    summary = host.invoke(fixture("schedule"), Context())
    assert summary["probed"] == 2
    assert summary["ok"] == 2
    assert {n["node"] for n in summary["nodes"]} == set(fleet.urls)
    assert all(n["head"] > 0 for n in summary["nodes"])


def test_unknown_event_is_a_clear_400(make_host: Callable[..., LambdaHost]) -> None:
    host = make_host()
    result = host.invoke({"Records": [{"eventSource": "aws:sqs"}]}, Context())
    assert result["statusCode"] == 400
    assert "Unsupported Lambda event" in json.loads(result["body"])["error"]["message"]


def test_without_a_store_it_races_with_fresh_records_it_uses_the_strategy(
    fleet: FleetThread, make_host: Callable[..., LambdaHost], tmp_path: Path
) -> None:
    alone = make_host()
    status = alone.invoke(get(fixture("http-api"), "/status.json"), Context())
    assert body_of(status)["balancer"]["strategy"] == "race"

    store = {"RPCBALANCER_STORE": f"sqlite:///{tmp_path / 'health.db'}"}
    balancer = make_host(store)
    before = balancer.invoke(get(fixture("http-api"), "/status.json"), Context())
    assert body_of(before)["balancer"]["strategy"] == "race"  # an empty store: nothing fresh yet
    canary = make_host(store)
    assert canary.canary_round(Context())["ok"] == 2
    balancer.balancer._due.clear()  # the next store refresh is due now, not in 15 s
    after = balancer.invoke(get(fixture("http-api"), "/status.json"), Context())
    doc = body_of(after)
    assert doc["balancer"]["strategy"] == "fastest"
    assert all(n["state"] == "usable" for n in doc["nodes"])


def test_node_state_lives_across_warm_invocations(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host(strategy="fastest", cache={"enabled": False})  # every call to a node
    event = fixture("http-api")
    for _ in range(20):
        assert host.invoke(event, Context())["statusCode"] == 200
    served = sum(
        n.counts["condenser_api.get_dynamic_global_properties"] for n in fleet.nodes.values()
    )
    assert served == 20
    assert host.invocations == 20
    assert sum(n.latency(time.monotonic()) is not None for n in host.balancer.fleet.nodes) >= 1


def test_request_deadline_follows_the_time_lambda_has_left(
    fleet: FleetThread, make_host: Callable[..., LambdaHost]
) -> None:
    host = make_host(strategy="round_robin", timeouts={"per_try": 10, "total": 12})
    for name in fleet.nodes:
        fleet.set(name, hang_rate=1.0)
    result = host.invoke(fixture("http-api"), Context(remaining=1.6))
    assert result["statusCode"] == 504
    message = body_of(result)["error"]["message"]
    assert "deadline" in message or "timed out" in message
    assert host.balancer.router.total <= 1.2  # Lambda's time left, less the margin


class _BigNode(BaseHTTPRequestHandler):
    """A node whose every answer is 7 MB of JSON."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": "x" * 7_000_000}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        body = b'{"status": "OK"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def big_node() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BigNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_answers_over_six_megabytes_become_a_jsonrpc_error(big_node: str) -> None:
    host = LambdaHost(lambda_config({"RPCBALANCER_NODES": big_node}))
    try:
        result = host.invoke(fixture("function-url"), Context())
        assert result["statusCode"] == 502
        error = body_of(result)
        assert error["id"] == 1
        assert "6 MB" in error["error"]["message"]
        original = host.invoke(original_event("POST", json.dumps({**RPC, "id": 5})), Context())
        assert original["statusCode"] == 502
        assert json.loads(original["body"])["id"] == 5
    finally:
        host.close()


def test_config_from_the_environment() -> None:
    config = lambda_config({"RPCBALANCER_CONFIG": '{"chain": "hive", "probe": {"timeout": 2}}'})
    assert config.chain == "hive"
    assert config.canary == "external"
    assert config.store == "none"
    assert config.probe.interval == 60  # Lambda's default kept beside the given key
    assert config.probe.timeout == 2
    yaml_config = lambda_config({"RPCBALANCER_CONFIG": "chain: blurt\nstrategy: round_robin\n"})
    assert yaml_config.strategy.name == "round_robin"
    with pytest.raises(ConfigError, match="not valid YAML"):
        lambda_config({"RPCBALANCER_CONFIG": "nodes: ["})


def test_a_misconfigured_function_answers_every_request_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aws_lambda, "_host", None)
    monkeypatch.setattr(aws_lambda, "_broken", None)
    monkeypatch.setenv("RPCBALANCER_CONFIG", '{"strategy": {"name": "fastest", "decay": -1}}')
    result = aws_lambda.handler(fixture("http-api"), Context())
    assert result["statusCode"] == 500
    message = json.loads(result["body"])["error"]["message"]
    assert "misconfigured" in message
    assert "decay" in message
    with pytest.raises(ConfigError):
        aws_lambda.canary_handler(fixture("schedule"), Context())


def test_status_page_and_metrics_on_lambda(
    fleet: FleetThread, make_host: Callable[..., LambdaHost], capfd: pytest.CaptureFixture[str]
) -> None:
    host = make_host()
    host.invoke(fixture("http-api"), Context())
    page = host.invoke(get(fixture("function-url"), "/status"), Context())
    assert page["statusCode"] == 200
    assert header(page, "content-type").startswith("text/html")
    assert "<title>rpcbalancer status</title>" in page["body"]
    metrics = host.invoke(get(fixture("http-api"), "/metrics"), Context())
    assert metrics["statusCode"] == 200
    assert (
        'rpcbalancer_requests_total{method="condenser_api.get_dynamic_global_properties",outcome="ok"} 1.0'
        in metrics["body"]
    )
    logged = [
        json.loads(line)
        for line in capfd.readouterr().out.splitlines()
        if line.startswith('{"ts":')
    ]
    assert [line["method"] for line in logged if "method" in line] == [RPC["method"]]
