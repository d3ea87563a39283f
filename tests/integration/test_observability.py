"""What operators see, from the real server process: /metrics parsed back with the
Prometheus parser against known traffic, the JSON access log, request ids, explained
choices, workers' metrics added up, and the /status page in headless Chromium."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rpcbalancer.sim import FleetThread

from ..cdp import Browser
from ..conftest import ROOT, require_tool

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        if line.startswith('{"ts":'):
            lines.append(json.loads(line))
    return lines


def test_metrics_count_known_traffic(fleet: FleetThread, balancer_process: Any) -> None:
    # Every call to a node (the cache, on by default, would answer the repeats).
    config = {"store": "none", "cache": {"enabled": False}}
    lb = balancer_process({"nodes": [fleet["fast"].url, fleet["medium"].url], **config})
    for i in range(7):
        assert lb.rpc(DGP["method"], ident=i).status_code == 200
    for i in range(3):
        requests.post(lb.url, json={"jsonrpc": "2.0", "method": "x.unknown", "id": i}, timeout=5)
    requests.post(lb.url, data=b"{not json", timeout=5)
    requests.post(lb.url, json=[{**DGP, "id": 1}, {**DGP, "id": 2}], timeout=5)

    answer = requests.get(f"{lb.url}/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = samples(answer.text)
    ok = "rpcbalancer_requests_total"
    assert value(metrics, ok, method=DGP["method"], outcome="ok") == 7
    assert value(metrics, ok, method="other", outcome="ok") == 3  # label set stays bounded
    assert value(metrics, ok, method="other", outcome="client_error") == 0
    assert value(metrics, ok, method="GET", outcome="client_error") == 1  # the parse error
    assert value(metrics, ok, method="batch", outcome="ok") == 1
    assert value(metrics, "rpcbalancer_request_duration_seconds_count") == 12
    tries = sum(
        value(metrics, "rpcbalancer_node_tries_total", node=fleet[n].url, outcome="ok")
        for n in ("fast", "medium")
    )
    assert tries == 11  # every forwarded request, no retries on a healthy fleet
    hist = sum(
        value(metrics, "rpcbalancer_node_try_duration_seconds_count", node=fleet[n].url)
        for n in ("fast", "medium")
    )
    assert hist == 11
    assert value(metrics, "rpcbalancer_probe_up", node=fleet["fast"].url) == 1
    assert value(metrics, "rpcbalancer_node_state", node=fleet["fast"].url, state="usable") == 1
    assert value(metrics, "rpcbalancer_node_head_block", node=fleet["fast"].url) > 0
    assert not any(name.endswith("x.unknown") for (_, labels) in metrics for name in dict(labels))


def test_a_dead_node_shows_in_metrics_as_down(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url, fleet["medium"].url],
            "store": "none",
            "probe": {"interval": 0.5, "timeout": 0.5},
        }
    )
    fleet.kill("medium")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = samples(requests.get(f"{lb.url}/metrics", timeout=5).text)
        if value(metrics, "rpcbalancer_probe_up", node=fleet["medium"].url) == 0:
            break
        time.sleep(0.2)
    assert value(metrics, "rpcbalancer_node_state", node=fleet["medium"].url, state="down") == 1
    assert value(metrics, "rpcbalancer_node_state", node=fleet["fast"].url, state="usable") == 1


def test_workers_metrics_add_up(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": [fleet["fast"].url], "store": "none"}, args=("--workers", "2"))
    for i in range(40):
        assert lb.rpc(DGP["method"], ident=i, headers={"Connection": "close"}).status_code == 200
    time.sleep(1.5)  # every worker shares its counters each second
    seen = set()
    for _ in range(6):
        metrics = samples(requests.get(f"{lb.url}/metrics", timeout=5).text)
        seen.add(value(metrics, "rpcbalancer_workers"))
        assert (
            value(metrics, "rpcbalancer_requests_total", method=DGP["method"], outcome="ok") == 40
        )
    assert seen == {2.0}


def test_access_log_lines_and_request_ids(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {
            "nodes": [{"url": fleet["fast"].url, "headers": {"X-Edge-Key": "${EDGE_KEY}"}}],
            "store": "none",
            "access_log": {"bodies": True, "body_max": 200},
        },
        env={"EDGE_KEY": "s3cr3t-edge-key"},
    )
    given = requests.post(
        lb.url, json={**DGP, "id": 1}, headers={"X-Request-Id": "req-42"}, timeout=5
    )
    assert given.headers["x-request-id"] == "req-42"
    sent = {k.lower(): v for k, v in fleet["fast"].last_headers.items()}
    assert sent["x-request-id"] == "req-42"  # passed on to the node
    made = requests.post(lb.url, json={**DGP, "id": 2}, timeout=5)
    assert made.headers["x-request-id"] and made.headers["x-request-id"] != "req-42"
    bad = requests.post(
        lb.url, json={**DGP, "id": 3}, headers={"X-Request-Id": "a b\tc"}, timeout=5
    )
    assert bad.headers["x-request-id"] != "a b\tc"  # not a sane token: ours instead
    requests.post(
        lb.url,
        json={"jsonrpc": "2.0", "method": "x.echo", "params": ["s3cr3t-edge-key"], "id": 4},
        timeout=5,
    )
    requests.post(lb.url, data=b"[]", timeout=5)
    time.sleep(1.3)  # lines are written every second
    lines = access_lines(lb.log)
    by_id = {line["id"]: line for line in lines}
    first = by_id["req-42"]
    assert first["method"] == DGP["method"]
    assert first["node"] == fleet["fast"].url
    assert first["status"] == 200 and first["outcome"] == "ok" and first["attempts"] == 1
    assert first["ms"] > 0 and first["in"] > 0 and first["out"] > 0
    assert first["ip"] == "127.0.0.1"
    assert by_id[made.headers["x-request-id"]]["method"] == DGP["method"]
    echo = next(line for line in lines if line.get("method") == "x.echo")
    assert "[redacted]" in echo["body"] and "s3cr3t" not in json.dumps(lines)
    assert "s3cr3t" not in lb.log  # never in any log line, headers included
    empty = next(line for line in lines if line["status"] == 400)
    assert empty["outcome"] == "client_error" and empty["error"]


def test_scores_explain_the_choice_when_allowed(fleet: FleetThread, balancer_process: Any) -> None:
    nodes = [fleet["fast"].url, fleet["slow"].url]
    # Every call to a node, so that their latencies are measured (no cache).
    lb = balancer_process(
        {"nodes": nodes, "store": "none", "explain": True, "cache": {"enabled": False}}
    )
    for i in range(20):
        lb.rpc(DGP["method"], ident=i)
    answer = requests.post(lb.url, json={**DGP, "id": 1}, headers={"X-RPC-Explain": "1"}, timeout=5)
    scores = dict(part.split("=") for part in answer.headers["x-rpc-scores"].split("; "))
    assert set(scores) == set(nodes)
    assert float(scores[fleet["fast"].url]) < float(scores[fleet["slow"].url])
    assert answer.headers["x-rpc-node"] == fleet["fast"].url
    status = requests.get(f"{lb.url}/status.json", timeout=5).json()
    assert status["balancer"]["choice"] == fleet["fast"].url
    assert "latency" in status["nodes"][0]["why"]

    quiet = balancer_process({"nodes": nodes, "store": "none"})
    plain = requests.post(
        quiet.url, json={**DGP, "id": 1}, headers={"X-RPC-Explain": "1"}, timeout=5
    )
    assert "x-rpc-scores" not in plain.headers  # opt-in only


@pytest.mark.slow
async def test_status_page_in_headless_chromium(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    chromium = require_tool("chromium")
    names = ["fast", "medium", "slow", "stale"]
    lb = balancer_process(
        {
            "nodes": [fleet[n].url for n in names],
            "store": f"sqlite:///{tmp_path / 'health.db'}",
            "probe": {"interval": 1, "timeout": 0.5},
        }
    )
    for i in range(30):
        lb.rpc(DGP["method"], ident=i)
    async with Browser(chromium, tmp_path / "chromium") as browser:
        await browser.open(f"{lb.url}/status")
        rows = await browser.wait_for(
            "document.querySelectorAll('#nodes tr').length === 4 && "
            "[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.node)"
        )
        assert rows == [fleet[n].url for n in names]
        state = "document.querySelector('tr[data-node=\"{}\"]').dataset.state"
        assert await browser.eval(state.format(fleet["fast"].url)) == "usable"
        assert await browser.eval(state.format(fleet["stale"].url)) == "excluded"
        assert await browser.wait_for("document.querySelectorAll('#nodes svg').length >= 3", 15)

        fleet.kill("medium")
        await browser.wait_for(state.format(fleet["medium"].url) + ' === "excluded"', 8)
        reason = await browser.eval(
            f"document.querySelector('tr[data-node=\"{fleet['medium'].url}\"] .reason').textContent"
        )
        assert "down" in reason
        same_origin = await browser.eval(
            "performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"
        )
        assert same_origin
        artifacts = Path(os.environ.get("RPCBALANCER_ARTIFACTS", ROOT / "test-artifacts"))
        await browser.screenshot(artifacts / "status-page.png")
        assert (artifacts / "status-page.png").stat().st_size > 10_000
        assert browser.console_errors() == []


def test_json_application_log(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "store": "none",
            "log_format": "json",
            "access_log": {"enabled": False},
        }
    )
    fleet.kill("fast")
    time.sleep(0.2)
    lb.rpc(DGP["method"])
    lb.stop()
    records = [json.loads(line) for line in lb.log.splitlines() if line.startswith("{")]
    assert records, lb.log
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("serving on http://127.0.0.1:") for r in records)
    assert not any(line.startswith('{"ts":') and '"http"' in line for line in lb.log.splitlines())
