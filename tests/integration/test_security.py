"""Safe on the public internet, against the real server process: rate limits (per address,
per key, shared through Redis), API keys, method rules, JSON-RPC validation without touching
a node, never a relay, TLS termination, and secrets that never leak."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import FleetThread

from ..conftest import require_tool
from .test_server import run_cli

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}
BROADCAST = {"jsonrpc": "2.0", "method": "condenser_api.broadcast_transaction", "params": [{}]}
KEY = "k3y-0123456789abcdef-secret"


def post(url: str, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        url,
        data=data,
        headers={"content-type": "application/json", **kw.pop("headers", {})},
        timeout=5,
        **kw,
    )


def node_calls(fleet: FleetThread) -> int:
    return sum(sum(n.counts.values()) for n in fleet.nodes.values())


def test_rate_limit_per_client_address(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "store": "none",
            "rate_limit": {"rate": 0.5, "burst": 3},
            "trusted_proxies": ["127.0.0.1/32"],
        }
    )
    codes = [post(lb.url, {**DGP, "id": i}).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = post(lb.url, {**DGP, "id": 9})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    error = limited.json()
    assert error["id"] == 9 and error["error"]["code"] == -32005
    assert "calls a second" in error["error"]["message"]
    # Behind a trusted proxy, each forwarded client has its own bucket.
    other = post(lb.url, {**DGP, "id": 1}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200
    batch = [{**DGP, "id": i} for i in range(3)]  # a batch costs one token per call
    assert post(lb.url, batch, headers={"X-Forwarded-For": "203.0.113.10"}).status_code == 200
    assert (
        post(lb.url, DGP | {"id": 1}, headers={"X-Forwarded-For": "203.0.113.10"}).status_code
        == 429
    )


def test_rate_limit_shared_through_redis(
    fleet: FleetThread, balancer_process: Any, redis_url: str
) -> None:
    config = {
        "nodes": [fleet["fast"].url],
        "store": redis_url + "?prefix=rl" + str(time.time_ns()),
        "rate_limit": {"rate": 0.2, "burst": 4},
    }
    a, b = balancer_process(config), balancer_process(config)
    assert [post(a.url, {**DGP, "id": i}).status_code for i in range(2)] == [200, 200]
    assert [post(b.url, {**DGP, "id": i}).status_code for i in range(3)] == [200, 200, 429]
    assert post(a.url, {**DGP, "id": 5}).status_code == 429  # one limit for both


def test_api_keys_required_by_header_or_path_with_their_own_limits(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "store": "none",
            "api_keys": {
                "keys": [
                    {"name": "app", "key": "${APP_KEY}", "rate_limit": {"rate": 0.1, "burst": 2}}
                ]
            },
        },
        env={"APP_KEY": KEY},
    )
    missing = post(lb.url, {**DGP, "id": 1})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == -32004
    wrong = post(lb.url, {**DGP, "id": 1}, headers={"X-API-Key": "not-the-key-at-all-00"})
    assert wrong.status_code == 401
    assert post(lb.url, {**DGP, "id": 1}, headers={"X-API-Key": KEY}).status_code == 200
    assert post(f"{lb.url}/{KEY}", {**DGP, "id": 2}).status_code == 200
    assert post(f"{lb.url}/{KEY}", {**DGP, "id": 3}).status_code == 429  # the key's own limit
    assert post(f"{lb.url}/not-a-key-but-long-enough", {**DGP, "id": 3}).status_code == 404
    time.sleep(1.2)
    assert KEY not in lb.log  # not in the access log's path, nor anywhere else


def test_method_rules_refuse_without_touching_a_node(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process(
        {"nodes": [fleet["fast"].url], "store": "none", "methods": {"deny": ["*.broadcast_*"]}}
    )
    before = node_calls(fleet)
    single = post(lb.url, {**BROADCAST, "id": 1})
    assert single.status_code == 403
    assert single.json()["error"]["code"] == -32601 and single.json()["id"] == 1
    assert node_calls(fleet) == before
    mixed = post(lb.url, [{**DGP, "id": 1}, {**BROADCAST, "id": 2}, {**DGP, "id": 3}])
    assert mixed.status_code == 200
    answers = {a["id"]: a for a in mixed.json()}
    assert "result" in answers[1] and "result" in answers[3]
    assert answers[2]["error"]["code"] == -32601
    assert fleet["fast"].broadcasts == []


def test_method_rules_per_api_key(fleet: FleetThread, balancer_process: Any) -> None:
    """A key's own ``methods`` apply on top of the endpoint's: a read-only key cannot
    broadcast, alone or inside a batch; another key can; the endpoint's deny holds for all."""
    reader, writer = KEY, KEY[::-1]
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "store": "none",
            "methods": {"deny": ["*.get_version"]},
            "api_keys": {
                "keys": [
                    {"name": "reader", "key": "${READER}", "methods": {"deny": ["*broadcast*"]}},
                    {"name": "writer", "key": "${WRITER}"},
                    {"name": "blocks", "key": "${BLOCKS}", "methods": {"allow": ["*.get_block"]}},
                ]
            },
        },
        env={"READER": reader, "WRITER": writer, "BLOCKS": KEY + "-blocks"},
    )
    before = node_calls(fleet)
    refused = post(lb.url, {**BROADCAST, "id": 1}, headers={"X-API-Key": reader})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == -32601 and refused.json()["id"] == 1
    by_path = post(f"{lb.url}/{reader}", {**BROADCAST, "id": 2})
    assert by_path.status_code == 403
    assert node_calls(fleet) == before and fleet["fast"].broadcasts == []
    mixed = post(lb.url, [{**DGP, "id": 1}, {**BROADCAST, "id": 2}], headers={"X-API-Key": reader})
    answers = {a["id"]: a for a in mixed.json()}
    assert "result" in answers[1] and answers[2]["error"]["code"] == -32601
    assert fleet["fast"].broadcasts == []
    assert post(lb.url, {**BROADCAST, "id": 3}, headers={"X-API-Key": writer}).status_code == 200
    assert len(fleet["fast"].broadcasts) == 1
    version = {"jsonrpc": "2.0", "method": "condenser_api.get_version", "params": [], "id": 4}
    for key in (reader, writer):  # the endpoint's own rule holds for every key
        assert post(lb.url, version, headers={"X-API-Key": key}).status_code == 403
    blocks = {"X-API-Key": KEY + "-blocks"}
    block = {"jsonrpc": "2.0", "method": "condenser_api.get_block", "params": [1], "id": 5}
    assert post(lb.url, block, headers=blocks).status_code == 200
    assert post(lb.url, {**DGP, "id": 6}, headers=blocks).status_code == 403


def test_jsonrpc_validation_as_the_spec_says(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {"nodes": [fleet["fast"].url], "store": "none", "limits": {"max_batch": 5, "max_depth": 8}}
    )
    before = node_calls(fleet)
    cases = {
        b"": (-32700, 400),
        b"{bad json": (-32700, 400),
        b"\xff\xfe\x00{}": (-32700, 400),
        b"[]": (-32600, 400),
        b"42": (-32600, 400),
        b'{"id": 1}': (-32600, 400),
        b'{"jsonrpc": "2.0", "method": 1, "id": "x"}': (-32600, 400),
        b'{"method": "a", "method": "b", "id": 1}': (-32600, 400),
        json.dumps([DGP] * 6).encode(): (-32600, 400),
        b'{"method": "a", "params": ' + b"[" * 10 + b"]" * 10 + b', "id": 1}': (-32600, 400),
    }
    for body, (code, status) in cases.items():
        answer = post(lb.url, body)
        assert answer.status_code == status, body
        assert answer.json()["error"]["code"] == code, body
    invalid_only = post(lb.url, b"[1, 2]")
    assert [a["error"]["code"] for a in invalid_only.json()] == [-32600, -32600]
    assert node_calls(fleet) == before  # none of these reached a node

    mixed = post(lb.url, [{**DGP, "id": "a"}, {"id": 5}, 7])
    by_id = [(a.get("id"), "result" in a) for a in mixed.json()]
    assert by_id == [("a", True), (5, False), (None, False)]

    note = post(lb.url, {"jsonrpc": "2.0", "method": DGP["method"], "params": []})
    assert note.status_code == 204 and note.content == b""
    notes = post(lb.url, [{"jsonrpc": "2.0", "method": DGP["method"]}] * 2)
    assert notes.status_code == 204

    big = 2**70 + 3  # (the fake node itself reads ids with orjson: only our own answers count)
    fleet.kill("fast")
    failed = post(lb.url, b'{"jsonrpc":"2.0","method":"a.b","params":[],"id":%d}' % big)
    assert failed.status_code in (502, 503)
    assert json.loads(failed.content)["id"] == big  # our own error echoes it exactly


def test_never_a_relay(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": [fleet["fast"].url], "store": "none", "forward_paths": True})
    with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as sock:
        sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"origin-form" in reply
    tricked = post(lb.url, {**DGP, "id": 1}, headers={"Host": "evil.example:80"})
    assert tricked.status_code == 200
    assert tricked.headers["x-rpc-node"] == fleet["fast"].url
    assert requests.get(f"{lb.url}/a/../../etc/passwd", timeout=5).status_code in (400, 404)
    answer = post(
        lb.url,
        {**DGP, "id": 1},
        headers={
            "Connection": "keep-alive, x-secret",
            "X-Secret": "1",
            "Proxy-Authorization": "Basic eA==",
        },
    )
    sent = {k.lower() for k in fleet["fast"].last_headers}
    assert answer.status_code == 200
    assert not sent & {"x-secret", "proxy-authorization", "cookie"}


def test_tls_termination(
    fleet: FleetThread, balancer_process: Any, certificate: tuple[Path, Path]
) -> None:
    curl = require_tool("curl")
    cert, key = certificate
    lb = balancer_process(
        {"nodes": [fleet["fast"].url], "store": "none"},
        args=("--tls-cert", str(cert), "--tls-key", str(key)),
        scheme="https",
    )
    done = subprocess.run(
        [curl, "-s", "--cacert", str(cert), "-d", json.dumps({**DGP, "id": 1}),
         "-H", "content-type: application/json", f"https://127.0.0.1:{lb.port}/"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["head_block_number"] > 0
    plain = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{lb.port}/health"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert plain.stdout in ("000", "400")  # no cleartext service on the TLS port
    again = requests.get(f"https://127.0.0.1:{lb.port}/health", verify=str(cert), timeout=5)
    assert again.status_code == 200


def test_a_bad_certificate_is_a_config_error(balancer_process: Any, tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(RuntimeError):
        balancer_process(
            {"nodes": ["http://127.0.0.1:9"], "store": "none"},
            args=("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "c.pem")),
        )


def test_secrets_never_leak(fleet: FleetThread, balancer_process: Any) -> None:
    secret = "sup3r-s3cret-value"
    node = fleet["fast"].url
    lb = balancer_process(
        {
            "nodes": [
                {"url": node + "/?token=${NODE_TOKEN}", "headers": {"X-Edge-Key": "${EDGE}"}},
                "http://127.0.0.1:9/?token=${NODE_TOKEN}",
            ],
            "store": "none",
            "annotate": "body",
            "access_log": {"bodies": True},
            "log_level": "debug",
        },
        env={"NODE_TOKEN": secret, "EDGE": secret + "-edge"},
    )
    answer = post(lb.url, {**DGP, "id": 1, "params": [secret]})
    assert answer.status_code == 200
    assert secret not in answer.text and secret not in json.dumps(dict(answer.headers))
    for path in ("/status.json", "/status", "/health", "/metrics", "/version"):
        assert secret not in requests.get(lb.url + path, timeout=5).text, path
    fleet.kill("fast")
    failed = post(lb.url, {**DGP, "id": 2})
    assert failed.status_code >= 500 and secret not in failed.text
    time.sleep(1.2)
    assert secret not in lb.log


def test_unverified_node_tls_is_a_warning_at_start(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process(
        {
            "nodes": [{"url": fleet["fast"].url, "name": "lenient", "verify_tls": False}],
            "store": "none",
        }
    )
    assert "node lenient: verify_tls is false: its TLS certificate is NOT verified" in lb.log


def test_a_key_in_a_node_url_never_leaks(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    """EVM providers put the key in the path (Infura's /v3/KEY) or the query: every part of
    a node URL that came from ${ENV} is shown as [redacted], through a session that kills
    and revives the node, in every answer, header, page, metric, log line and store row."""
    path_key, query_key = "0123456789abcdef0123456789abcdef", "q-Key-9876543210"
    node = fleet["fast"].url
    store = tmp_path / "health.db"
    config = {
        "nodes": [
            node + "/v3/${PATH_KEY}",
            {"url": fleet["medium"].url + "/rpc?apikey=${QUERY_KEY}"},
            {"url": fleet["slow"].url + "/v2/${PATH_KEY}", "name": "named"},
        ],
        "store": f"sqlite:///{store}",
        "annotate": "body",
        "explain": True,
        "probe": {"interval": 0.5},
        "access_log": {"bodies": True},
        "log_level": "debug",
        "circuit_breaker": {"failures": 1, "cooldown": 0.5},
    }
    lb = balancer_process(config, env={"PATH_KEY": path_key, "QUERY_KEY": query_key})
    seen: list[str] = []

    def visit() -> None:
        for i in range(6):
            answer = post(lb.url, {**DGP, "id": i}, headers={"X-RPC-Explain": "1"})
            seen.extend([answer.text, json.dumps(dict(answer.headers))])
        for path in ("/status.json", "/status", "/health", "/metrics", "/status/history.json"):
            seen.append(requests.get(lb.url + path, timeout=5).text)

    visit()
    names = {json.loads(text).get("__server__") for text in seen if text.startswith('{"')}
    assert f"{node}/v3/[redacted]" in names or "named" in names
    fleet.kill("fast")
    time.sleep(1.0)
    visit()
    fleet.revive("fast")
    time.sleep(1.5)
    visit()
    status = run_cli(
        "status",
        "--config",
        str(lb.log_path.with_suffix(".yaml")),
        env={"PATH_KEY": path_key, "QUERY_KEY": query_key},
    )
    assert "named" in status.stdout and "[redacted]" in status.stdout, status.stderr
    seen += [status.stdout, status.stderr, lb.log]
    time.sleep(1.2)  # the access log is written every second
    seen.append(lb.log)
    status_json = json.loads(requests.get(lb.url + "/status.json", timeout=5).text)
    shown = {n["name"] for n in status_json["nodes"]}
    assert shown == {f"{node}/v3/[redacted]", fleet["medium"].url + "/rpc", "named"}
    for key in (path_key, query_key):
        for text in seen:
            assert key not in text
        assert key.encode() not in store.read_bytes()
