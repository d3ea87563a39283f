"""Operating a running server (hosts/live.py): reloads under load, drained nodes, the admin
routes and commands, and a reload across workers. A real server process, fake nodes on
loopback, an open-loop load of real HTTP requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from rpcbalancer.sim import Behaviour, FleetThread

KEY = "an-admin-key-for-tests-0123456789"
DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


class Load:
    """An open loop of reads at ``rate`` per second, half on kept-alive connections and half
    on new ones, until stopped; every answer that is not a JSON-RPC result counts as failed."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _one(self, n: int) -> None:
        body = {**DGP, "id": n}
        if n % 7 == 0:
            body = {"jsonrpc": "2.0", "method": "condenser_api.get_block", "params": [n], "id": n}
        try:
            if n % 2:
                session = getattr(self._local, "session", None) or requests.Session()
                self._local.session = session
                answer = session.post(self.url, json=body, timeout=10)
            else:
                answer = requests.post(self.url, json=body, timeout=10)
            doc = answer.json()
            if answer.status_code != 200 or "result" not in doc or doc.get("id") != n:
                self.failed.append(f"{answer.status_code} {answer.text[:200]}")
        except Exception as exc:
            self.failed.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        with ThreadPoolExecutor(32) as pool:
            start = time.monotonic()
            while not self._stop.is_set():
                due = start + self.sent / self.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pool.submit(self._one, self.sent)
                self.sent += 1


def admin(url: str, path: str, key: str | None = KEY) -> requests.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + path, headers=headers, timeout=60)


def write(path: Path, config: dict[str, Any]) -> None:
    text = yaml.safe_dump(config)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)  # (a reload never reads half a file)


def status(url: str) -> dict[str, Any]:
    return dict(requests.get(url + "/status.json", timeout=10).json())


@pytest.fixture
def fleet() -> Any:
    behaviours = {name: Behaviour(latency=0.003) for name in "abcde"}
    with FleetThread(behaviours) as running:
        yield running


@pytest.mark.timeout(240)
def test_twenty_reloads_under_load_fail_no_request(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    """Open loop, 200 req/s for a minute; 20 reloads (SIGHUP and POST /admin/reload in turn)
    that add, remove and re-route nodes; one of them invalid, refused and reported."""
    path = tmp_path / "config.yaml"
    urls = {name: fleet[name].url for name in "abcde"}

    def config(i: int) -> dict[str, Any]:
        names = ["a", "b", "c", "d", "e"][i % 3 : i % 3 + 3]
        doc: dict[str, Any] = {
            "nodes": [urls[n] for n in names],
            "store": "none",
            "admin": {"key": KEY},
            "strategy": ["fastest", "round_robin", "random"][i % 3],
        }
        if i % 2:  # blocks re-routed to a group of their own
            doc["upstreams"] = {"blocks": {"nodes": [urls["e"], urls["a"]]}}
            doc["routes"] = {"appbase.condenser_api.get_block": {"upstream": "blocks"}}
        return doc

    write(path, config(0))
    lb = balancer_process(None, config_path=path)
    assert lb.proc is not None
    refused = None
    with Load(lb.url, 200) as load:
        time.sleep(2)
        for i in range(1, 21):
            if i == 10:  # one that does not validate: refused, the old one serves on
                write(path, {**config(i), "strategy": "no-such-strategy"})
                refused = admin(lb.url, "/admin/reload")
            else:
                write(path, config(i))
                if i % 2:
                    lb.proc.send_signal(signal.SIGHUP)
                else:
                    answer = admin(lb.url, "/admin/reload")
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["reloaded"] is True
            time.sleep(2.8)
        time.sleep(1)
    assert load.sent >= 200 * 55
    assert load.failed == [], load.failed[:5]
    assert refused is not None and refused.status_code == 400
    assert "strategy" in refused.json()["error"] and refused.json()["reloaded"] is False
    # The last configuration serves: its nodes, its groups.
    shown = status(lb.url)
    assert {node["name"] for node in shown["nodes"]} == set(config(20)["nodes"])
    assert "reload" in lb.log and "configuration reloaded" in lb.log


def test_what_a_node_learned_survives_a_reload(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    urls = [fleet[name].url for name in "abc"]
    doc = {"nodes": urls, "store": "none", "admin": {"key": KEY}, "cache": {"enabled": False}}
    write(path, {**doc, "strategy": "round_robin"})
    lb = balancer_process(None, config_path=path)
    for i in range(30):
        assert lb.rpc(DGP["method"], ident=i).status_code == 200
    before = {n["name"]: n for n in status(lb.url)["nodes"]}
    write(path, {**doc, "nodes": urls[:2], "strategy": "random"})
    done = admin(lb.url, "/admin/reload").json()
    assert done["removed"] == [urls[2]] and done["added"] == []
    after = {n["name"]: n for n in status(lb.url)["nodes"]}
    assert set(after) == set(urls[:2])
    for url in urls[:2]:  # its latency estimate and its counts carried over
        assert before[url]["requests"] > 0 and after[url]["requests"] >= before[url]["requests"]
        assert after[url]["latency_ms"]["ewma"] == before[url]["latency_ms"]["ewma"]


def test_a_drained_node_gets_nothing_new_and_finishes_what_it_has(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    fleet.set("a", latency=0.8)  # the request in flight when it is drained
    path = tmp_path / "config.yaml"
    write(
        path,
        {
            "nodes": [fleet["a"].url, fleet["b"].url],
            "store": "none",
            "admin": {"key": KEY},
            "strategy": "round_robin",
            "hedge": {"enabled": False},
            "cache": {"enabled": False},
        },
    )
    lb = balancer_process(None, config_path=path)
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(lb.rpc, DGP["method"], None, i) for i in range(4)]
        time.sleep(0.3)  # some are on a now
        assert fleet["a"].counts  # (a has requests in flight)
        answer = admin(
            lb.url, f"/admin/nodes/{requests.utils.quote(fleet['a'].url, safe='')}/drain"
        )
        assert answer.status_code == 200 and answer.json()["drained"] is True
        assert all(f.result().status_code == 200 for f in slow)  # what it had, finished
    got = sum(fleet["a"].counts.values())
    time.sleep(1.0)
    for i in range(40):
        assert lb.rpc(DGP["method"], ident=i).status_code == 200
    assert sum(fleet["a"].counts.values()) - got <= 2  # (probes only: no client request)
    shown = {n["name"]: n for n in status(lb.url)["nodes"]}
    assert "drained" in (shown[fleet["a"].url].get("reason") or "")
    metrics = requests.get(lb.url + "/metrics", timeout=10).text
    assert f'rpcbalancer_node_state{{node="{fleet["a"].url}",state="drained"}} 1.0' in metrics
    undo = admin(lb.url, f"/admin/nodes/{requests.utils.quote(fleet['a'].url, safe='')}/undrain")
    assert undo.json()["drained"] is False
    fleet.set("a", latency=0.003)
    served = {lb.rpc(DGP["method"], ident=i).headers["x-rpc-node"] for i in range(10)}
    assert fleet["a"].url in served


def test_admin_routes_need_the_key_and_are_absent_without_one(
    fleet: FleetThread, balancer_process: Any
) -> None:
    closed = balancer_process({"nodes": [fleet["a"].url], "store": "none"})
    assert admin(closed.url, "/admin/reload").status_code == 404
    lb = balancer_process({"nodes": [fleet["a"].url], "store": "none", "admin": {"key": KEY}})
    assert admin(lb.url, "/admin/reload", key=None).status_code == 401
    assert admin(lb.url, "/admin/reload", key="wrong" * 5).status_code == 401
    assert requests.get(lb.url + "/admin/reload", headers={"authorization": f"Bearer {KEY}"},
                        timeout=10).status_code == 405  # fmt: skip
    assert admin(lb.url, "/admin/nodes/nobody/drain").status_code == 404
    assert KEY not in lb.log


def test_the_reload_and_drain_commands(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    doc = {"nodes": [fleet["a"].url, fleet["b"].url], "store": "none", "admin": {"key": KEY}}
    write(path, doc)
    lb = balancer_process(None, config_path=path)
    command = [sys.executable, "-m", "rpcbalancer"]
    env = {**os.environ, "NO_COLOR": "1"}
    write(path, {**doc, "nodes": [fleet["a"].url, fleet["b"].url, fleet["c"].url]})
    done = subprocess.run(
        [*command, "reload", "--config", str(path), "--url", lb.url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == [fleet["c"].url]
    done = subprocess.run(
        [*command, "drain", fleet["b"].url, "--config", str(path), "--url", lb.url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["drained"] is True
    write(path, {**doc, "strategy": "no-such-strategy"})
    done = subprocess.run(
        [*command, "reload", "--config", str(tmp_path / "config.yaml"), "--url", lb.url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode != 0  # (the command reads the file first: it refuses it too)


@pytest.mark.timeout(120)
def test_an_upgrade_under_load_fails_no_request(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    """The documented upgrade: the new program starts on the same port (SO_REUSEPORT), then
    the old one gets SIGTERM: it stops accepting, answers what its connections send with
    ``Connection: close``, closes the idle ones, and exits. Open loop, 200 req/s: 0 failed."""
    path = tmp_path / "config.yaml"
    write(path, {"nodes": [fleet[n].url for n in "abc"], "store": "none"})
    old = balancer_process(None, config_path=path)
    assert old.proc is not None
    with Load(old.url, 200) as load:
        time.sleep(3)
        new = balancer_process(None, config_path=path, port=old.port)
        deadline = time.monotonic() + 20
        while "serving on" not in new.log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "serving on" in new.log
        time.sleep(1)
        old.proc.send_signal(signal.SIGTERM)
        assert old.proc.wait(30) == 0
        sent_at_stop = load.sent
        time.sleep(4)
    assert load.failed == [], load.failed[:5]
    assert load.sent - sent_at_stop >= 600  # the new one served on
    assert new.proc is not None and new.proc.poll() is None
    served = [line for line in new.log.splitlines() if '"status":200' in line]
    assert len(served) >= 600


def test_every_worker_reloads_on_sighup(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    doc = {"nodes": [fleet["a"].url], "store": "none", "admin": {"key": KEY}}
    write(path, doc)
    lb = balancer_process(None, config_path=path, args=("--workers", "2"))
    assert lb.proc is not None
    write(path, {**doc, "nodes": [fleet["a"].url, fleet["b"].url]})
    lb.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    shown: dict[int, int] = {}  # worker pid -> nodes it showed last
    while time.monotonic() < deadline:
        # New connections land on either worker: each must come to show both nodes.
        for _ in range(10):
            doc = status(lb.url)
            shown[doc["balancer"]["pid"]] = len(doc["nodes"])
        if len(shown) == 2 and set(shown.values()) == {2}:
            break
        time.sleep(0.3)
    assert len(shown) == 2 and set(shown.values()) == {2}, shown
    # ... and a drain through one worker reaches the other.
    quoted = requests.utils.quote(fleet["b"].url, safe="")
    assert admin(lb.url, f"/admin/nodes/{quoted}/drain").status_code == 200
    time.sleep(1.0)
    for _ in range(10):
        shown = {n["name"]: n for n in status(lb.url)["nodes"]}
        assert "drained" in (shown[fleet["b"].url].get("reason") or "")
