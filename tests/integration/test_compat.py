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
