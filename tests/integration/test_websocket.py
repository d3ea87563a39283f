"""JSON-RPC over WebSocket and EVM subscriptions, through a real balancer process.

Subscriptions go to real ganache nodes (tests/ganache.py plays the network between them);
the clients are ethers' ``WebSocketProvider`` (npm) and web3.py's ``WebSocketProvider``
(PyPI), as apps run them, the ``websockets`` library, and a raw socket where a test needs a
client that misbehaves (one that never reads, one that never answers a ping).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from rpcbalancer.sim import Behaviour, FleetThread, stop_process

from ..conftest import BalancerProcess
from .test_clients import _command, run_client

TOPIC = "0x" + "11" * 32
INIT = "0x6030600c60003960306000f3602a6000527f" + "11" * 32 + "60206000a160206000f3"
"""The clients' test contract (tests/clients/py/evm.py): each call emits one log with TOPIC."""
SENDER = "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1"


def _network(folder: Path, names: list[str]) -> Any:
    from ..ganache import EvmNetwork

    _command("subscribe.js")  # node and node_modules, or skip/fail
    return EvmNetwork(names, folder)


def _balancer(network: Any, folder: Path, **extra: Any) -> BalancerProcess:
    config = {
        "store": "none",
        "chain": "evm",
        "probe": {"interval": 0.5},
        "max_head_age": 3600,
        "nodes": [
            {"url": node.url, "name": name, "ws_url": f"ws://127.0.0.1:{node.rpc_port}"}
            for name, node in network.nodes.items()
        ],
        **extra,
    }
    return BalancerProcess(config, folder).start()


def _ws(lb: BalancerProcess, path: str = "/", **kw: Any) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{lb.port}{path}", open_timeout=10, **kw)


def _call(
    ws: ClientConnection, method: str, params: list[Any] | None = None, ident: int = 1
) -> Any:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or []}))
    while True:
        doc = json.loads(ws.recv(10))
        if doc.get("id") == ident:
            return doc


def _status(lb: BalancerProcess) -> dict[str, Any]:
    return dict(requests.get(f"{lb.url}/status.json", timeout=5).json()["balancer"]["websocket"])


class Wallet:
    """Transactions from ganache's first account, signed by a node (its accounts are
    unlocked) and sent through the network's gossip, each mined into a block of its own."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self.nonce = int(network.call("g1", "eth_getTransactionCount", [SENDER, "latest"]), 16)

    def send(self, via: str, to: str | None = None, data: str = "0x") -> str:
        tx = {"from": SENDER, "nonce": hex(self.nonce), "gas": hex(300_000),
              "gasPrice": hex(2 * 10**10), "data": data, **({"to": to} if to else {})}  # fmt: skip
        raw = self.network.call(via, "eth_signTransaction", [tx])
        sent = self.network.send(raw, via)
        assert sent.startswith("0x"), sent
        self.nonce += 1
        return str(sent)


# -- subscriptions that survive a dead node ------------------------------------------------------


@pytest.mark.timeout(240)
def test_ethers_and_web3_subscriptions_survive_a_dead_node_and_a_held_one(tmp_path: Path) -> None:
    """ethers and web3.py subscribe to newHeads and to logs through the balancer in front of
    three ganache nodes; the node carrying the subscriptions is killed, then the next one is
    held back (it gets no blocks, its socket stays open): each client sees every block once,
    in order, and every log once, and the balancer holds one subscription per topic."""
    with _network(tmp_path, ["g1", "g2", "g3"]) as network:
        network.mine(2)
        lb = _balancer(network, tmp_path, websocket={"silent_after": 2})
        try:
            wallet = Wallet(network)
            deployed = wallet.send("g1", data=INIT)
            receipt = network.call("g1", "eth_getTransactionReceipt", [deployed])
            contract = receipt["contractAddress"]
            url = f"ws://127.0.0.1:{lb.port}"
            seconds = "24"
            with ThreadPoolExecutor(2) as pool:
                ethers = pool.submit(run_client, "subscribe.js", url, seconds, TOPIC, timeout=90)
                web3 = pool.submit(run_client, "subscribe.py", url, seconds, TOPIC, timeout=90)
                _until(lambda: _clients(lb) >= 4, 30, lambda: _status(lb))
                topics = _status(lb)["topics"]
                since = network.head("g1") + 1
                sent, killed, held = _drive(network, wallet, contract, lb)
                final = max(network.head(name) for name in network.nodes if name != killed)
                got = {"ethers": ethers.result(), "web3": web3.result()}
            status = _status(lb)
        finally:
            lb.stop()
    assert len(topics) == 2, topics  # newHeads and one logs filter, each shared by both
    assert status["switches"] >= 2, status
    assert status["filled_heads"] >= 1, status  # the held node's missed heads, by number
    heads = {
        "ethers": got["ethers"]["blocks"],
        "web3": [int(number) for number, _, _ in got["web3"]["heads"]],
    }
    for name, run in got.items():
        assert run["errors"] == [], (name, run["errors"])
        blocks = heads[name]
        assert blocks == list(range(blocks[0], blocks[0] + len(blocks))), (name, blocks)
        assert blocks[0] <= since and blocks[-1] == final, (name, since, final, blocks)
        logs = run["logs"]
        hashes = [tx for _, tx, _ in logs]
        assert len(hashes) == len(set(hashes)), (name, logs)  # every log once
        assert set(sent) <= set(hashes), (name, sorted(set(sent) - set(hashes)))
        assert [block for block, _, _ in logs] == sorted(block for block, _, _ in logs)
    for (_, before, _), (_, _, parent) in itertools.pairwise(got["web3"]["heads"]):
        assert parent == before  # one chain, across both switches
    assert killed != held


def _clients(lb: BalancerProcess) -> int:
    return sum(topic["clients"] for topic in _status(lb)["topics"])


def _carrier(lb: BalancerProcess) -> str:
    nodes = {topic["node"] for topic in _status(lb)["topics"]}
    assert len(nodes) == 1 and None not in nodes, nodes
    return str(nodes.pop())


def _drive(
    network: Any, wallet: Wallet, contract: str, lb: BalancerProcess
) -> tuple[list[str], str, str]:
    """Blocks for about 16 s, every other one with a log; the carrier is killed after 4 s,
    the next one held from 8 s to 12 s. The transactions that logged, and who died and
    who was held."""
    sent: list[str] = []
    killed = held = ""
    for step in range(40):
        live = [n for n in network.nodes if n not in (killed, held)]
        if step % 2:
            sent.append(wallet.send(live[0], to=contract))
        else:
            network.mine(1)
        if step == 10:
            killed = _carrier(lb)
            network.hold(killed)
            stop_process(network[killed].proc)
        elif step == 20:
            _until(lambda gone=killed: _carrier(lb) != gone, 10, lambda: _status(lb))
            held = _carrier(lb)
            network.hold(held)
        elif step == 30:
            network.release(held)
        time.sleep(0.4)
    return sent, killed, held


def _until(check: Any, seconds: float, show: Any) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, show()
        time.sleep(0.1)


# -- calls, sharing and limits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _network(tmp_path_factory.mktemp("ganache"), ["g1"]) as network:
        network.mine(2)
        yield network


@pytest.fixture(scope="module")
def evm_lb(one_node: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    lb = _balancer(
        one_node,
        tmp_path_factory.mktemp("lb"),
        websocket={"max_subscriptions": 2, "max_message_bytes": 4096},
    )
    try:
        yield lb
    finally:
        lb.stop()


def test_calls_and_batches_answered_as_over_http(evm_lb: BalancerProcess) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "eth_chainId", "params": []}
    over_http = requests.post(evm_lb.url, json=call, timeout=5).json()
    with _ws(evm_lb) as ws:
        assert _call(ws, "eth_chainId", ident=7) == over_http
        batch = [{**call, "id": 1}, {**call, "id": 2, "method": "eth_blockNumber"}]
        ws.send(json.dumps(batch))
        answers = json.loads(ws.recv(10))
        assert sorted(a["id"] for a in answers) == [1, 2]
        assert all("result" in a for a in answers)
        ws.send("{not json")
        assert json.loads(ws.recv(10))["error"]["code"] == -32700  # parse error, still open
        assert _call(ws, "eth_blockNumber", ident=3)["result"].startswith("0x")
    metrics = requests.get(f"{evm_lb.url}/metrics", timeout=5).text
    assert 'rpcbalancer_websocket_messages_total{direction="in"}' in metrics


def test_one_upstream_subscription_per_topic_shared_by_clients(
    one_node: Any, evm_lb: BalancerProcess
) -> None:
    with _ws(evm_lb) as first, _ws(evm_lb) as second:
        a = _call(first, "eth_subscribe", ["newHeads"])["result"]
        b = _call(second, "eth_subscribe", ["newHeads"])["result"]
        assert a != b
        topics = _status(evm_lb)["topics"]
        assert [t["clients"] for t in topics if t["topic"] == '["newHeads"]'] == [2]
        one_node.mine(2)
        for ws, ident in ((first, a), (second, b)):
            seen = [json.loads(ws.recv(10)) for _ in range(2)]
            assert [m["params"]["subscription"] for m in seen] == [ident, ident]
            numbers = [int(m["params"]["result"]["number"], 16) for m in seen]
            assert numbers[1] == numbers[0] + 1
        assert _call(first, "eth_unsubscribe", [a], ident=9)["result"] is True
        assert _call(first, "eth_unsubscribe", [a], ident=10)["result"] is False
        assert _call(first, "eth_unsubscribe", [b], ident=11)["result"] is False  # not its own
    _until(lambda: _status(evm_lb)["topics"] == [], 5, lambda: _status(evm_lb))


def test_pending_transactions_reach_the_subscriber(one_node: Any, evm_lb: BalancerProcess) -> None:
    with _ws(evm_lb) as ws:
        sub = _call(ws, "eth_subscribe", ["newPendingTransactions"])["result"]
        sent = Wallet(one_node).send("g1", to=SENDER)
        got = json.loads(ws.recv(10))["params"]
        assert got == {"subscription": sub, "result": sent}
        assert _call(ws, "eth_unsubscribe", [sub], ident=2)["result"] is True


def test_subscription_limits(evm_lb: BalancerProcess) -> None:
    with _ws(evm_lb) as ws:
        unknown = _call(ws, "eth_subscribe", ["everything"], ident=4)["error"]
        assert unknown["code"] == -32602 and "newHeads" in unknown["message"]
        assert "result" in _call(ws, "eth_subscribe", ["newHeads"], ident=1)
        assert "result" in _call(ws, "eth_subscribe", ["logs", {"topics": [TOPIC]}], ident=2)
        refused = _call(ws, "eth_subscribe", ["newPendingTransactions"], ident=3)["error"]
        assert "websocket.max_subscriptions" in refused["message"]
    with _ws(evm_lb) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "x" * 5000}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # too big


def test_a_slow_reader_is_closed_and_a_silent_client_is_pinged_out(
    one_node: Any, tmp_path: Path
) -> None:
    lb = _balancer(
        one_node,
        tmp_path,
        websocket={
            "max_buffered_bytes": 65536, "ping_interval": 0.5, "ping_timeout": 0.5,
            "max_connections": 2,
        },
    )  # fmt: skip
    try:
        with _ws(lb), _ws(lb), pytest.raises(InvalidStatus) as refused:
            _ws(lb).close()
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        time.sleep(0.2)  # (the two closed)
        with _raw(lb, rcvbuf=4096) as slow:
            batch = json.dumps(
                [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(100)]
            )
            with contextlib.suppress(OSError):  # (the server may close while we still write)
                for _ in range(5000):  # (up to 25 MB: past what the kernel's buffers hold)
                    slow.sendall(_frame(batch.encode()))
            assert 1008 in _close_codes(slow, 20)
        with _raw(lb) as silent:  # never answers a ping
            started = time.monotonic()
            assert 1011 in _close_codes(silent, 10)
            assert time.monotonic() - started < 5
        counts = _status(lb)
        assert counts["slow_readers"] == 1 and counts["ping_timeouts"] >= 1
    finally:
        lb.stop()


@contextlib.contextmanager
def _raw(lb: BalancerProcess, rcvbuf: int = 0) -> Iterator[socket.socket]:
    """A WebSocket client on a bare socket, after its handshake."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", lb.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        yield sock
    finally:
        sock.close()


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_codes(sock: socket.socket, seconds: float) -> list[int]:
    """Read frames (never answering) until the server's close; the close codes seen."""
    sock.settimeout(seconds)
    data = b""
    codes: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            opcode, size, at = data[0] & 0x0F, data[1] & 0x7F, 2
            if len(data) < {126: 4, 127: 10}.get(size, 2):
                break  # (the rest of its header is still on its way)
            if size == 126:
                size, at = struct.unpack("!H", data[2:4])[0], 4
            elif size == 127:
                size, at = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < at + size:
                break
            if opcode == 8:  # (no code in it: 1005, as RFC 6455 reads it)
                codes.append(struct.unpack("!H", data[at : at + 2])[0] if size >= 2 else 1005)
            data = data[at + size :]
        if codes:
            break
    return codes


def test_handshakes_refused_with_a_reason(evm_lb: BalancerProcess) -> None:
    asked = {"Upgrade": "websocket", "Connection": "Upgrade"}
    old = requests.get(evm_lb.url, headers=asked, timeout=5)
    assert old.status_code == 400 and "version 13" in old.json()["error"]["message"]
    asked["Sec-WebSocket-Version"] = "13"
    keyless = requests.get(evm_lb.url, headers=asked, timeout=5)
    assert keyless.status_code == 400 and "Sec-WebSocket-Key" in keyless.json()["error"]["message"]
    with pytest.raises(Exception, match="404"):
        _ws(evm_lb, "/elsewhere")


def test_calls_over_wss_and_no_subscriptions_off_evm(
    balancer_process: Any, certificate: tuple[Path, Path]
) -> None:
    """A Steem fleet behind TLS: calls over ``wss://``; ``eth_subscribe`` is refused."""
    import ssl

    cert, key = certificate
    with FleetThread({"a": Behaviour(latency=0.002)}) as fleet:
        lb = balancer_process(
            {"nodes": [fleet["a"].url], "store": "none"},
            args=("--tls-cert", str(cert), "--tls-key", str(key)),
            scheme="https",
        )
        context = ssl.create_default_context(cafile=str(cert))
        with connect(f"wss://127.0.0.1:{lb.port}/", ssl=context, open_timeout=10) as ws:
            dgp = _call(ws, "condenser_api.get_dynamic_global_properties")
            assert dgp["result"]["head_block_number"] > 0
            refused = _call(ws, "eth_subscribe", ["newHeads"], ident=2)["error"]
            assert "EVM" in refused["message"]


def test_a_reload_keeps_websocket_clients_and_their_subscriptions(
    one_node: Any, tmp_path: Path
) -> None:
    lb = _balancer(one_node, tmp_path)
    try:
        with _ws(lb) as ws:
            sub = _call(ws, "eth_subscribe", ["newHeads"])["result"]
            one_node.mine(1)
            first = json.loads(ws.recv(10))["params"]
            assert first["subscription"] == sub
            path = lb.log_path.with_suffix(".yaml")
            config = yaml.safe_load(path.read_text())
            config["websocket"] = {"max_subscriptions": 5}
            path.write_text(yaml.safe_dump(config))
            assert lb.proc is not None
            lb.proc.send_signal(signal.SIGHUP)
            _until(lambda: "configuration reloaded" in lb.log, 10, lambda: lb.log[-2000:])
            one_node.mine(1)
            after = json.loads(ws.recv(10))["params"]
            assert after["subscription"] == sub
            assert int(after["result"]["number"], 16) == int(first["result"]["number"], 16) + 1
            assert _call(ws, "eth_chainId", ident=5)["result"] == "0x539"
    finally:
        lb.stop()


def test_many_clients_one_topic(one_node: Any, evm_lb: BalancerProcess) -> None:
    """Twenty connections on one topic: one upstream subscription, each sees each head."""
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(_ws(evm_lb)) for _ in range(20)]
        for ws in clients:
            assert "result" in _call(ws, "eth_subscribe", ["newHeads"])
        topics = _status(evm_lb)["topics"]
        assert [t["clients"] for t in topics] == [20]
        one_node.mine(1)
        numbers = {int(json.loads(ws.recv(10))["params"]["result"]["number"], 16) for ws in clients}
        assert len(numbers) == 1
