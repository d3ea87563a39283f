"""The real server process, over real HTTP, in front of a fake fleet on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from rpcbalancer.sim import FleetThread

from ..conftest import free_port

DGP = "condenser_api.get_dynamic_global_properties"


def names(fleet: FleetThread) -> dict[str, str]:
    return {node.url: name for name, node in fleet.nodes.items()}


def test_post_is_forwarded_and_the_answer_passes_through(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process({"nodes": fleet.urls, "strategy": "first"})
    resp = lb.rpc(DGP, ident="abc")
    assert resp.status_code == 200
    assert resp.headers["x-rpc-node"] == fleet["fast"].url
    assert resp.headers["x-rpc-attempts"] == "1"
    assert resp.headers["x-rpc-node-version"] == "0.23.1"
    assert resp.headers["access-control-allow-origin"] == "*"
    # The body is the node's own bytes: compare with asking the node directly.
    direct = requests.post(
        fleet["fast"].url,
        json={"jsonrpc": "2.0", "method": "condenser_api.get_version", "params": [], "id": 3},
        timeout=5,
    )
    via = lb.rpc("condenser_api.get_version", ident=3)
    assert via.content == direct.content
    assert resp.json()["id"] == "abc"


def test_get_is_forwarded(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls, "strategy": "first"})
    doc = requests.get(lb.url + "/", timeout=5).json()
    assert doc["status"] == "OK"
    assert isinstance(doc["jussi_num"], int)
    head = requests.head(lb.url + "/", timeout=5)
    assert head.status_code == 200
    assert head.content == b""


def test_batch_passes_through_unchanged(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls, "annotate": "body"})
    batch = [
        {"jsonrpc": "2.0", "method": "condenser_api.get_version", "params": [], "id": i}
        for i in range(5)
    ]
    resp = requests.post(lb.url, json=batch, timeout=5)
    doc = resp.json()
    assert isinstance(doc, list)
    assert [m["id"] for m in doc] == list(range(5))
    assert all(set(m) == {"jsonrpc", "id", "result"} for m in doc)


def test_annotate_body_matches_the_original_design(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process({"nodes": fleet.urls, "annotate": "body", "strategy": "first"})
    doc = lb.rpc(DGP).json()
    assert doc["__server__"] == fleet["fast"].url
    assert doc["__version__"]["result"]["blockchain_version"] == "0.23.1"
    assert set(doc) == {"jsonrpc", "id", "result", "__server__", "__version__"}
    status = requests.get(lb.url + "/", timeout=5).json()  # GET / is annotated as well
    assert status["status"] == "OK"
    assert status["__server__"] == fleet["fast"].url


def test_methods_cors_and_paths(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls})
    put = requests.put(lb.url + "/", data=b"{}", timeout=5)
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert "Method not allowed" in put.json()["error"]["message"]
    pre = requests.options(
        lb.url + "/",
        timeout=5,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    missing = requests.get(lb.url + "/nope", timeout=5)
    assert missing.status_code == 404
    assert "served at /" in missing.json()["error"]["message"]
    bad = requests.post(lb.url, data=b"{not json", timeout=5)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == -32700


def test_forward_paths_appends_path_and_query(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": [fleet["fast"].url], "forward_paths": True})
    resp = requests.get(lb.url + "/some/path?x=1", timeout=5)
    assert resp.status_code == 404  # the node's own answer
    assert resp.json()["path"] == "/some/path?x=1"
    sneaky = requests.get(lb.url + "/a/../../etc", timeout=5)
    assert sneaky.status_code in (400, 404)


def test_control_routes(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls})
    health = requests.get(lb.url + "/health", timeout=5)
    assert health.status_code == 200
    doc = health.json()
    assert doc["usable"] == 3
    stale = next(n for n in doc["nodes"] if n["name"] == fleet["stale"].url)
    assert not stale["usable"]
    assert re.match(r"(199|200|201) blocks behind", stale["reason"])
    version = requests.get(lb.url + "/version", timeout=5).json()
    assert version["name"] == "rpcbalancer"
    assert version["strategy"] == "fastest"
    status = requests.get(lb.url + "/status.json", timeout=5).json()
    by_name = {n["name"]: n for n in status["nodes"]}
    assert by_name[fleet["stale"].url]["lag"] in (199, 200, 201)
    assert by_name[fleet["fast"].url]["state"] == "usable"
    assert (
        status["balancer"]["best_head_block"] == fleet["fast"].head()
        or abs(status["balancer"]["best_head_block"] - fleet["fast"].head()) <= 2
    )


def test_health_is_503_when_no_node_is_usable(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(
        {"nodes": [fleet["stale"].url, fleet["fast"].url], "min_version": "9.0.0"}
    )
    assert requests.get(lb.url + "/health", timeout=5).status_code == 503
    # ... yet requests are still served: the balancer fails open.
    assert lb.rpc(DGP).status_code == 200


def test_no_stale_answers_from_a_lagging_node(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls, "strategy": "random"})
    for i in range(60):
        resp = lb.rpc(DGP, ident=i)
        assert resp.headers["x-rpc-node"] != fleet["stale"].url
        head = resp.json()["result"]["head_block_number"]
        assert head >= fleet["fast"].head() - 2


def test_failover_without_client_errors_when_a_node_dies(
    fleet: FleetThread, balancer_process: Any
) -> None:
    # The cache off: with it, the 1600 reads of one call were a handful of node requests (the
    # failover went untested, and whether "slow" served any of them was up to the clock).
    lb = balancer_process(
        {
            "nodes": [fleet[n].url for n in ("fast", "medium", "slow")],
            "strategy": "round_robin",
            "cache": {"enabled": False},
        }
    )
    errors: list[str] = []
    served: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        for i in range(400):
            if stop.is_set():
                break
            resp = session.post(
                lb.url,
                data=orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": i}),
                timeout=10,
            )
            if resp.status_code != 200 or "result" not in resp.json():
                errors.append(resp.text)
            served[
                names(fleet)[resp.headers.get("x-rpc-node", "")]
                if resp.status_code == 200
                else "error"
            ] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    fleet.kill("fast")
    time.sleep(1.0)
    fleet.revive("fast")
    for w in workers:
        w.join(60)
    stop.set()
    assert errors == []
    assert sum(served.values()) == 1600
    assert served["medium"] > 0
    assert served["slow"] > 0


def test_race_strategy_end_to_end(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process({"nodes": fleet.urls, "strategy": "race"})
    served = Counter(lb.rpc(DGP, ident=i).headers["x-rpc-node"] for i in range(10))
    assert fleet["stale"].url not in served
    assert served.most_common(1)[0][0] in (fleet["fast"].url, fleet["medium"].url)


def test_original_shape_version_is_asked_once_when_unknown(
    fleet: FleetThread, balancer_process: Any
) -> None:
    """Racing without a store, a node whose version no probe could read is asked on the
    first request that needs it: concurrent requests share that one call, and
    ``__version__`` is never null (the answer, or the failure's text)."""
    for name in fleet.nodes:
        fleet.set(name, fail_methods="get_version")  # the first probe round cannot read it
    lb = balancer_process(
        {
            "nodes": [fleet["fast"].url],
            "strategy": "race",
            "store": "none",
            "annotate": "body",
            "probe": {"interval": 600},
        }
    )
    first = lb.rpc(DGP, ident=1).json()
    assert first["__version__"] == "get_version failed: HTTP 503"  # the original's error text
    fleet.set("fast", fail_methods="")
    time.sleep(5.2)  # a failure is the answer for a few seconds, then the node is asked again
    before = fleet["fast"].counts["condenser_api.get_version"]
    with ThreadPoolExecutor(8) as pool:
        docs = list(pool.map(lambda i: lb.rpc(DGP, ident=i).json(), range(8)))
    for doc in docs:
        assert doc["__version__"]["result"]["blockchain_version"] == "0.23.1"
        assert doc["__server__"] == fleet["fast"].url
    assert fleet["fast"].counts["condenser_api.get_version"] == before + 1


def test_nodes_from_the_environment(fleet: FleetThread, balancer_process: Any) -> None:
    lb = balancer_process(None, env={"RPCBALANCER_NODES": fleet["medium"].url})
    assert lb.rpc(DGP).headers["x-rpc-node"] == fleet["medium"].url


def test_doctorlai_config_file_serves(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    nodes = "\n".join(f'  - "{url}"' for url in fleet.urls)
    config.write_text(
        f"nodes:\n{nodes}\nrateLimit:\n  windowMs: 10000\n  maxRequests: 600\n"
        'version: "2025-09-13"\nmax_jussi_number_diff: 100\nmin_blockchain_version: "0.23.0"\n'
        "retry_count: 3\ntimeout: 2500\nplimit: 5\nstrategy: max_jussi_number\n"
        "cache:\n  enabled: ${CACHE_ENABLED}\n  ttl: ${CACHE_TTL}\n"
    )
    lb = balancer_process(None, config_path=config)
    resp = lb.rpc(DGP)
    assert resp.status_code == 200
    assert resp.headers["x-rpc-node"] != fleet["stale"].url
    assert "DoctorLai config keys not carried over" in lb.log
    assert "plimit" in lb.log


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "rpcbalancer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
    )


def test_bad_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes: ['gopher://x']\nstrategy: fastest\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "nodes.0.url" in result.stderr
    assert "http:// or https://" in result.stderr
    assert "Traceback" not in result.stderr


def test_probe_prints_a_table(fleet: FleetThread) -> None:
    result = run_cli("probe", env={"RPCBALANCER_NODES": ",".join(fleet.urls)})
    assert result.returncode == 0, result.stderr
    for name in ("fast", "stale"):
        assert fleet[name].url in result.stdout
    # The fake chain advances every 3 s: a probe may straddle a new block.
    assert re.search(r"\b(199|200|201) blocks behind", result.stdout)
    assert "0.23.1" in result.stdout


def test_probe_fails_when_no_node_is_usable(fleet: FleetThread) -> None:
    fleet.kill("medium")
    result = run_cli("probe", env={"RPCBALANCER_NODES": fleet["medium"].url})
    assert result.returncode == 1
    assert "connection refused" in result.stdout


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_workers_share_the_port_and_stop_together(
    fleet: FleetThread, balancer_process: Any
) -> None:
    lb = balancer_process(
        {"nodes": [fleet["fast"].url, fleet["medium"].url]}, args=("--workers", "2")
    )
    assert lb.proc is not None
    workers = _children(lb.proc.pid)
    assert len(workers) >= 2
    sessions = [requests.Session() for _ in range(8)]  # separate connections, spread by the kernel
    for i in range(80):
        resp = sessions[i % 8].post(
            lb.url,
            data=orjson.dumps({"jsonrpc": "2.0", "method": DGP, "params": [], "id": i}),
            timeout=10,
        )
        assert resp.status_code == 200 and resp.json()["id"] == i
    for session in sessions:
        session.close()
    lb.proc.terminate()
    assert lb.proc.wait(20) is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_canary_once_then_status(fleet: FleetThread, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/health.db"
    env = {"RPCBALANCER_NODES": ",".join(fleet.urls)}
    once = run_cli("canary", "--once", "--store", store, env=env)
    assert once.returncode == 0, once.stderr
    assert "probed 4 nodes, 4 up" in once.stdout
    status = run_cli("status", "--store", store, env=env)
    assert status.returncode == 0, status.stderr
    assert fleet["fast"].url in status.stdout and "usable" in status.stdout
    assert re.search(r"excluded: (199|200|201) blocks behind", status.stdout)
    assert "ms" in status.stdout  # latency percentiles from the history


def test_status_exit_codes(fleet: FleetThread, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/down.db"
    fleet.kill("slow")
    env = {"RPCBALANCER_NODES": fleet["slow"].url}
    assert run_cli("canary", "--once", "--store", store, env=env).returncode == 0
    down = run_cli("status", "--store", store, env=env)
    assert down.returncode == 1 and "no node is usable" in down.stderr
    assert "connection refused" in down.stdout
    unreachable = run_cli("status", "--store", f"redis://127.0.0.1:{free_port()}/0", env=env)
    assert unreachable.returncode == 2 and "cannot read the health store" in unreachable.stderr
    bad = run_cli("canary", "--interval", "soon", env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
