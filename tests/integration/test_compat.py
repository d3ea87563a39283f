"""Peers' own config files, read unchanged by the real server (only node URLs pointed at the
simulated fleet, the same URL replaced everywhere it appears)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from rpcbalancer.sim import Behaviour, FleetThread

from ..conftest import peer_file

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}
EDGE_KEY = "edge-0123456789-abcdef-key"


def test_doctorlai_sample_config_serves_with_headers_per_node(
    balancer_process: Any, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """DoctorLai's ``headers:`` maps a node URL to that node's own headers: each header
    reaches exactly the nodes its URL names, probes included, and no other node."""
    text = peer_file("doctorlai-config.yaml").read_text()
    theirs = ["https://api2.justyy.com", "https://api.justyy.com", "https://api.steemit.com"]
    cert, key = certificate
    behaviours = {name: Behaviour(latency=0.002) for name in ("api2", "api", "steemit")}
    with FleetThread(behaviours) as fleet:
        ours = [fleet["api2"].url, fleet["api"].url, fleet["steemit"].url]
        for url, node in zip(theirs, ours, strict=True):
            assert text.count(url) >= 1
            text = text.replace(f'"{url}"', f'"{node}"')
        path = tmp_path / "config.yaml"
        path.write_text(text)
        env = {
            "X_EDGE_KEY": EDGE_KEY,
            "STEEM_LB_VERSION": "2025-10-18",
            "SSL_CERT_PATH": str(cert),
            "SSL_KEY_PATH": str(key),
            "CACHE_ENABLED": "true",
            "CACHE_TTL": "3",
            "DEBUG": "false",
        }
        lb = balancer_process(None, config_path=path, env=env, scheme="https")
        session = requests.Session()  # (verify per request: the environment's CA bundle
        ca = str(cert)  # would win over a session's own)
        served = set()
        for i in range(40):
            resp = session.post(lb.url, json={**DGP, "id": i}, timeout=10, verify=ca)
            assert resp.status_code == 200, resp.text
            served.add(resp.headers["x-rpc-node"])
        # Every node served (the probes saw the headers too), each with its own headers.
        assert fleet["api2"].header_values["x-edge-key"] == {EDGE_KEY}
        assert fleet["api"].header_values["x-edge-key"] == {EDGE_KEY}
        assert "x-edge-key" not in fleet["steemit"].header_values
        assert sum(fleet["steemit"].counts.values()) > 0  # it was asked, without the key
        # Their user agent went to every node; the one compatibility warning names what
        # is not carried over, and the key itself appears nowhere.
        assert all(
            any(v.startswith("Mozilla/5.0") for v in n.header_values["user-agent"])
            for n in fleet.nodes.values()
        )
        warning = [line for line in lb.log.splitlines() if "not carried over" in line]
        assert len(warning) == 1
        for key in ("plimit", "firstK", "sticky", "debug", "weighted_routing", "max_age"):
            assert key in warning[0], key
        status = session.get(lb.url + "/status.json", timeout=5, verify=ca).text
        assert EDGE_KEY not in status and EDGE_KEY not in lb.log
        assert json.loads(status)["balancer"]["strategy"] == "max_block"


def _serve(text: str, urls: dict[str, str], tmp_path: Path, name: str) -> Path:
    """The peer's file with only its backend URLs pointed at the simulated nodes."""
    for theirs, ours in urls.items():
        assert theirs in text, theirs
        text = text.replace(theirs, ours)
    path = tmp_path / name
    path.write_text(text)
    return path


def _served_by(fleet: FleetThread, before: dict[str, int]) -> set[str]:
    return {name for name, n in fleet.nodes.items() if sum(n.counts.values()) > before[name]}


def _ask(lb: Any, fleet: FleetThread, method: str, params: Any) -> tuple[Any, set[str]]:
    before = {name: sum(n.counts.values()) for name, n in fleet.nodes.items()}
    resp = requests.post(
        lb.url, json={"jsonrpc": "2.0", "method": method, "params": params, "id": 1}, timeout=10
    )
    return resp, _served_by(fleet, before)


def test_jussi_dev_config_serves_as_it_is(balancer_process: Any, tmp_path: Path) -> None:
    text = peer_file("jussi-DEV_config.json").read_text()
    with FleetThread({"steemd": Behaviour(latency=0.002)}) as fleet:
        path = _serve(text, {"https://api.steemit.com": fleet["steemd"].url}, tmp_path, "j.json")
        lb = balancer_process(None, config_path=path, env={"RPCBALANCER_STORE": "none"})
        old = fleet["steemd"].head() - 100
        legacy, _ = _ask(lb, fleet, "get_block", [old])
        assert legacy.status_code == 200 and legacy.headers["x-rpc-upstream"] == "steemd"
        assert legacy.json()["result"]["block_id"].startswith(f"{old:08x}")
        assert fleet["steemd"].counts["condenser_api.get_block"] == 1  # translated to appbase
        dgp, _ = _ask(lb, fleet, DGP["method"], [])
        assert dgp.status_code == 200 and "head_block_number" in dgp.json()["result"]
        warning = [line for line in lb.log.splitlines() if "jussi config keys" in line]
        assert len(warning) == 1 and "blacklist_accounts" in warning[0]


def test_jussi_hivemind_example_routes_each_method_to_its_backend(
    balancer_process: Any, tmp_path: Path
) -> None:
    text = peer_file("jussi-EXAMPLE_hivemind_upstream_config.json").read_text()
    behaviours = {n: Behaviour(latency=0.002) for n in ("steemd", "history", "hivemind")}
    with FleetThread(behaviours, chains={"hivemind": "hivemind"}) as fleet:
        urls = {
            "https://your.account.history.steemd.url": fleet["history"].url,
            "https://your.steemd.url": fleet["steemd"].url,
            "https://your.hivemind.url": fleet["hivemind"].url,
        }
        path = _serve(text, urls, tmp_path, "hivemind.json")
        lb = balancer_process(None, config_path=path, env={"RPCBALANCER_STORE": "none"})
        followers, served = _ask(lb, fleet, "condenser_api.get_followers", ["a", None, "blog", 1])
        assert followers.status_code == 200 and served == {"hivemind"}
        history, served = _ask(lb, fleet, "condenser_api.get_account_history", ["a", -1, 1])
        assert history.status_code == 200 and served == {"history"}
        head, served = _ask(lb, fleet, "hive.db_head_state", {})
        assert served == {"hivemind"} and head.json()["result"]["db_head_block"] > 0
        dgp, served = _ask(lb, fleet, DGP["method"], [])
        assert served == {"steemd"} and dgp.headers["x-rpc-upstream"] == "steemd"


def test_drone_example_config_routes_each_method_to_its_backend(
    balancer_process: Any, tmp_path: Path
) -> None:
    text = peer_file("drone-config.example.yaml").read_text()
    names = {
        "hived": "http://haproxy:7008",
        "hivemind": "http://haproxy:7002",
        "hafah": "http://haproxy:7003",
        "hived-sync": "http://haproxy:7006",
        "hafsql": "http://haproxy:7007",
    }
    behaviours = {name: Behaviour(latency=0.002) for name in names}
    with FleetThread(behaviours, chains={"hivemind": "hivemind"}) as fleet:
        path = _serve(
            text, {url: fleet[name].url for name, url in names.items()}, tmp_path, "config.yaml"
        )
        lb = balancer_process(
            None,
            config_path=path,
            args=("--host", "127.0.0.1"),
            env={"RPCBALANCER_STORE": "none"},
        )
        post, served = _ask(lb, fleet, "bridge.get_post", {"author": "a", "permlink": "p"})
        assert served == {"hivemind"} and post.headers["x-rpc-upstream"] == "hivemind"
        assert post.json()["result"]["author"] == "a"
        old = fleet["hived"].head() - 100
        block, served = _ask(lb, fleet, "condenser_api.get_block", [old])
        assert served == {"hived"} and block.headers["x-cache"] == "miss"
        again, served = _ask(lb, fleet, "condenser_api.get_block", [old])
        assert served == set() and again.headers["x-cache"] == "hit"  # EXPIRE_IF_REVERSIBLE
        _, served = _ask(lb, fleet, "block_api.get_block", {"block_num": old})
        assert served == {"hafah"}
        _, served = _ask(lb, fleet, "condenser_api.broadcast_transaction_synchronous", [{}])
        assert served == {"hived-sync"}
        assert len(fleet["hived-sync"].broadcasts) == 1
        _, served = _ask(lb, fleet, "get_dynamic_global_properties", [])  # legacy: translated
        assert served == {"hived"}
        assert fleet["hived"].counts["condenser_api.get_dynamic_global_properties"] >= 1
        warning = [line for line in lb.log.splitlines() if "drone config keys" in line]
        assert len(warning) == 1 and "operator_message" in warning[0]


def test_doctorlai_monitoring_finds_what_it_looks_for(
    balancer_process: Any, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """DoctorLai's own black-box checks (its tests/tests.sh) that need no live chain, against
    its unchanged sample config (nodes pointed at the simulated fleet): ``GET /`` with its
    fifteen fields, ``/health``, ``/version`` with the config's ``version``, and ``/metrics``
    under its names."""
    text = peer_file("doctorlai-config.yaml").read_text()
    theirs = ["https://api2.justyy.com", "https://api.justyy.com", "https://api.steemit.com"]
    cert, key = certificate
    behaviours = {name: Behaviour(latency=0.002) for name in ("api2", "api", "steemit")}
    with FleetThread(behaviours) as fleet:
        ours = [fleet["api2"].url, fleet["api"].url, fleet["steemit"].url]
        for url, node in zip(theirs, ours, strict=True):
            text = text.replace(f'"{url}"', f'"{node}"')
        path = tmp_path / "config.yaml"
        path.write_text(text)
        env = {
            "X_EDGE_KEY": EDGE_KEY,
            "STEEM_LB_VERSION": "54007649e8d5",
            "SSL_CERT_PATH": str(cert),
            "SSL_KEY_PATH": str(key),
            "CACHE_ENABLED": "false",
            "CACHE_TTL": "3",
            "DEBUG": "false",
        }
        lb = balancer_process(None, config_path=path, env=env, scheme="https")
        get = lambda route, **kw: requests.get(lb.url + route, timeout=10, verify=str(cert), **kw)  # noqa: E731
        for _ in range(5):  # some traffic for the counters
            requests.post(lb.url, json={**DGP, "id": 1}, timeout=10, verify=str(cert))
        # 1 and 2: GET /, with and without a JSON content type.
        for headers in ({}, {"content-type": "application/json"}):
            page = get("/", headers=headers)
            doc = page.json()
            assert doc["status"] == "OK" and str(doc["status_code"]) == "200"
            assert doc["__load_balancer_version__"] == "54007649e8d5"
            for field in [
                "status",
                "datetime",
                "source_commit",
                "docker_tag",
                "jussi_num",
                "status_code",
                "__server__",
                "__version__",
                "__selected__",
                "__servers__",
                "__ip__",
                "__config__",
                "__first_k_candidates__",
                "__load_balancer_version__",
                "__stats__",
            ]:
                assert doc.get(field) not in (None, False), field  # (as jq -e judges it)
            assert doc["__server__"] in ours and doc["__servers__"] == ours
            assert doc["__server__"] == page.headers["server"] == doc["__selected__"]["server"]
            assert page.headers["loadbalancerversion"] == "54007649e8d5"
            assert doc["__version__"]["result"]["blockchain_version"]
            assert doc["__stats__"]["total"] >= 5
            assert set(doc["__stats__"]["rps_stats"]) == {"1min", "5min", "15min"}
            # (the answer cache serves some of the reads: each node's count is its tries)
            assert sum(c["count"] for c in doc["__stats__"]["access_counters"].values()) >= 1
        # 7: /health.
        health = get("/health").json()
        assert health["status"] == "OK" and isinstance(health["uptime_seconds"], int)
        assert health["nodes"] == ours and health["version"] == "54007649e8d5"
        # 8: /version.
        assert get("/version").json()["version"] == "54007649e8d5"
        # 9: /metrics, under its names (ours beside them).
        metrics = get("/metrics").text
        assert "steem_lb_requests_total" in metrics
        assert "# TYPE steem_lb_requests_total counter" in metrics
        for node in ours:
            assert f'steem_lb_node_access_total{{server="{node}"}}' in metrics
        assert 'steem_lb_requests_per_second{window="1min"}' in metrics
        assert "rpcbalancer_requests_total" in metrics
