"""Real client libraries through a real balancer, as apps use them.

Steem and Hive: dsteem, steem-js and dhive (npm), lighthive and hive-nectar (PyPI), each in
front of a simulated fleet with a lagging node, with ``annotate: headers`` and ``body``.
EVM: ethers (npm) and web3.py (PyPI) in front of three real ganache nodes (tests/ganache.py
plays the network between them). The clients run as their own processes from
tests/clients/ (``make clients`` installs them, pinned); the tests read what each step
returned and what the nodes got.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread
from rpcbalancer.sim.steem_api import TEST_PUBLIC_KEY

from ..conftest import ROOT, BalancerProcess
from ..services import missing

CLIENTS = ROOT / "tests" / "clients"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
STEEM_ID = "0" * 64
HIVE_ID = "beeab0de" + "0" * 56


def _command(client: str) -> list[str]:
    """How to start a client's script (JavaScript clients by name, Python ones by file)."""
    if client.endswith(".py"):
        if not CLIENTS_PYTHON.exists():
            missing(".venv-clients (make clients)")
        return [str(CLIENTS_PYTHON), str(CLIENTS / "py" / client)]
    node = shutil.which("node")
    if node is None or not (CLIENTS / "js" / "node_modules").is_dir():
        missing("node and tests/clients/js/node_modules (make clients)")
    return [str(node), str(CLIENTS / "js" / client)]


def run_client(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run one client script; what it printed, with every step's outcome."""
    done = subprocess.run(
        [*_command(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{script} printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return dict(json.loads(lines[-1]))


def values(results: dict[str, Any]) -> dict[str, Any]:
    """Every step's value; a failed step fails the test with its error."""
    failed = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and not v["ok"]}
    assert not failed, failed
    return {k: v["value"] if isinstance(v, dict) else v for k, v in results.items()}


def start_balancer(config: dict[str, Any], folder: Path) -> BalancerProcess:
    return BalancerProcess({"store": "none", **config}, folder).start()


# -- Steem and Hive ------------------------------------------------------------------------------

STEEM_CLIENTS = ["dsteem", "steem-js", "steem-js-appbase"]
HIVE_CLIENTS = ["dhive", "lighthive", "nectar"]


@pytest.fixture(scope="module")
def chain_fleet(request: pytest.FixtureRequest) -> Iterator[FleetThread]:
    """Two healthy nodes and one 200 blocks behind (never to be asked), of the chain the
    test names (``indirect``)."""
    behaviours = {
        "fast": Behaviour(latency=0.003),
        "steady": Behaviour(latency=0.015, jitter=0.3),
        "behind": Behaviour(latency=0.001, lag=200),
    }
    with FleetThread(behaviours, chain=request.param) as fleet:
        yield fleet


@pytest.fixture(scope="module", params=["headers", "body"])
def chain_balancer(
    request: pytest.FixtureRequest,
    chain_fleet: FleetThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, BalancerProcess]]:
    chain = chain_fleet["fast"].chain
    config = {"chain": chain, "nodes": chain_fleet.urls, "annotate": request.param}
    lb = start_balancer(config, tmp_path_factory.mktemp("lb"))
    try:
        yield chain, request.param, lb
    finally:
        lb.stop()


def _script(client: str) -> tuple[str, list[str]]:
    if client in ("lighthive", "nectar"):
        return "hive.py", [client]
    return "steem.js", [client]


@pytest.mark.parametrize(
    ("chain_fleet", "client"),
    [("steem", c) for c in STEEM_CLIENTS] + [("hive", c) for c in HIVE_CLIENTS],
    indirect=["chain_fleet"],
)
def test_steem_and_hive_clients(
    client: str, chain_fleet: FleetThread, chain_balancer: tuple[str, str, BalancerProcess]
) -> None:
    """Each client connects as it does in real life, reads a block, its header, an account,
    a post, a batch where it can, and broadcasts one transfer: every answer is the chain's,
    none from the node 200 blocks behind, and the transfer reaches exactly one node, once."""
    chain, _, lb = chain_balancer
    fleet = chain_fleet
    head = fleet["fast"].head()
    block = head - 100  # irreversible
    broadcasts = {name: len(node.broadcasts) for name, node in fleet.nodes.items()}
    asked_behind = sum(fleet["behind"].counts.values())
    sent_before = list(fleet.mempool.transfers)
    script, args = _script(client)
    got = values(run_client(script, *args, lb.url, str(block)))

    connect = got["connect"]
    assert connect["config_chain_id"] == (HIVE_ID if chain == "hive" else STEEM_ID)
    if "chain_id" in connect:  # the id the client signs with agrees with the node's
        assert connect["chain_id"] == connect["config_chain_id"]
    assert connect["head"] >= head - 2  # the healthy nodes' head, not the lagging one's
    assert got["block"] == f"{block:08x}" + "0" * 32
    if "block_header" in got:
        assert got["block_header"] == f"{block - 1:08x}" + "0" * 32
    if "block_appbase" in got:
        assert got["block_appbase"] == got["block"]
    if "current_block" in got:  # dsteem/dhive: the last irreversible block
        assert head - 20 <= got["current_block"] <= head
    symbol = "HIVE" if chain == "hive" else "STEEM"
    # The fleet's nodes apply the transfers they took: the earlier clients' left alice less.
    before = 100.0 - sum(amount for _, sender, _, amount in sent_before if sender == "alice")
    assert got["account"] == {
        "name": "alice",
        "balance": f"{before:.3f} {symbol}",
        "key": TEST_PUBLIC_KEY,
    }
    assert got["content"] == "A post by alice"
    if "batch" in got:  # in the order asked
        ids = [f"{n:08x}" + "0" * 32 for n in (block, block + 1, block + 2)]
        assert got["batch"][:3] == ids
    assert got["broadcast"]

    sent = {n: len(node.broadcasts) - broadcasts[n] for n, node in fleet.nodes.items()}
    assert sum(sent.values()) == 1 and sent["behind"] == 0, sent
    (node,) = [fleet[n] for n, count in sent.items() if count]
    member = node.broadcasts[-1]
    assert "transfer" in json.dumps(member) and "alice" in json.dumps(member)
    # The lagging node is probed, never asked a client's question.
    probes = fleet["behind"].counts
    client_calls = sum(probes.values()) - asked_behind
    probe_calls = probes["condenser_api.get_dynamic_global_properties"]
    assert client_calls <= probe_calls


@pytest.mark.parametrize("chain_fleet", ["steem", "hive"], indirect=True)
def test_annotated_replies_carry_the_server_and_version(
    chain_balancer: tuple[str, str, BalancerProcess],
) -> None:
    """What the clients above read with ``annotate: body``: the original's reply shape."""
    chain, annotate, lb = chain_balancer
    body = {"jsonrpc": "2.0", "method": "condenser_api.get_config", "params": [], "id": "7"}
    doc = requests.post(lb.url, json=body, timeout=10).json()
    assert doc["id"] == "7" and "result" in doc
    if annotate == "body":
        assert doc["__server__"].startswith("http://127.0.0.1:")
        version = doc["__version__"]["result"]["blockchain_version"]  # the node's own reply
        assert version == ("1.27.5" if chain == "hive" else "0.23.1")
    else:
        assert "__server__" not in doc and "__version__" not in doc


# -- EVM: ganache ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ..ganache import GANACHE, EvmNetwork

    _command("evm.js")  # node and node_modules, or skip/fail
    assert GANACHE.is_file()
    with EvmNetwork(["g1", "g2", "g3"], tmp_path_factory.mktemp("ganache")) as network:
        network.mine(2)
        yield network


def evm_config(network: Any, **extra: Any) -> dict[str, Any]:
    names = extra.pop("order", list(network.nodes))
    return {
        "chain": "evm",
        "nodes": [{"url": network[n].url, "name": n} for n in names],
        "probe": {"interval": 0.2},
        "max_block_lag": 1,
        "max_head_age": 3600,
        **extra,
    }


@pytest.fixture(scope="module")
def evm_balancer(evm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    lb = start_balancer(evm_config(evm, cache={"enabled": True}), tmp_path_factory.mktemp("lb"))
    try:
        yield lb
    finally:
        lb.stop()


def _sent(network: Any) -> list[str]:
    return [raw for node in network.nodes.values() for raw in node.sent]


def _check_evm_run(got: dict[str, Any], network: Any, sent_before: int) -> None:
    assert got["chain_id"] in (1337, "1337")
    assert got["block_number"] >= 2
    assert (
        got["block_by_number"] == network.call("g1", "eth_getBlockByNumber", ["0x1", False])["hash"]
    )
    assert got["block_by_hash"] == 1
    assert int(got["balance"]) > 0
    assert got["deploy"]["status"] == 1 and got["deploy"]["address"].startswith("0x")
    assert int(got["call"]) == 42
    assert got["transaction"]["status"] == 1 and got["transaction"]["logs"] == 1
    assert got["logs"] == 1
    # Every signed transaction reached one node, once; each is on every node's chain now.
    sent = _sent(network)[sent_before:]
    assert len(sent) == len(set(sent)) == len(got["sent"]), (sent, got["sent"])
    for tx_hash in got["sent"]:
        for name in network.nodes:
            receipt = network.call(name, "eth_getTransactionReceipt", [tx_hash])
            assert receipt is not None and receipt["status"] == "0x1", (name, tx_hash)


def test_ethers_through_the_balancer(evm: Any, evm_balancer: BalancerProcess) -> None:
    """ethers as a dapp uses it (batched calls, a chain-id check beside them, a signed
    transaction in a batch with reads): every step answers right, nothing is sent twice."""
    before = len(_sent(evm))
    key = "0x6370fd033278c143179d81c5526140625662b8daa446c22ee2d73db3707e620c"  # account 2
    got = values(run_client("evm.js", evm_balancer.url, key))
    _check_evm_run(got, evm, before)
    assert got["raw"] == 1 and got["receipt"] == got["deploy"]["address"]


def test_web3_py_through_the_balancer(evm: Any, evm_balancer: BalancerProcess) -> None:
    before = len(_sent(evm))
    key = "0x6cbed15c793ce57650b9877cf6fa156fbef513c4e6134f022a85b1ffdd59b2a1"  # account 1
    got = values(run_client("evm.py", "all", evm_balancer.url, key))
    assert got["connected"] is True
    _check_evm_run(got, evm, before)
    assert got["batch"][0] == 1 and got["batch"][1:] == [True, True]


def _evm_call(lb: BalancerProcess, method: str, params: list[Any]) -> requests.Response:
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 7}
    answer = requests.post(lb.url, json=body, timeout=10)
    assert answer.status_code == 200 and "error" not in answer.json(), answer.text
    return answer


def _signed_transfer(network: Any) -> str:
    account = "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1"  # account 0, unlocked in ganache
    fees = {"maxFeePerGas": hex(20 * 10**9), "maxPriorityFeePerGas": hex(10**9)}
    nonce = network.call("g1", "eth_getTransactionCount", [account, "latest"])
    tx = {"from": account, "to": account, "value": "0x1", "gas": "0x5208", "nonce": nonce}
    return str(network.call("g1", "eth_signTransaction", [{**tx, **fees}]))


def test_transactions_survive_a_node_that_dies_on_half_of_them(evm: Any, tmp_path: Path) -> None:
    """The issue's broadcasts on real EVM nodes: g2 takes every second signed transaction it
    gets, gossips it, and dies before answering. Through round_robin, each of 20 transfers
    gets one answer, its hash; each is on every node's chain once. (Read-your-writes off: it
    would keep one client's broadcasts on the node that took the first.)"""
    config = evm_config(evm, strategy="round_robin", consistency={"read_your_writes": False})
    lb = start_balancer(config, tmp_path)
    account = "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1"  # account 0, unlocked in ganache
    fees = {"maxFeePerGas": hex(20 * 10**9), "maxPriorityFeePerGas": hex(10**9)}
    evm["g2"].die_every = 2
    try:
        first = int(evm.call("g1", "eth_getTransactionCount", [account, "latest"]), 16)
        hashes = []
        for n in range(20):
            tx = {"from": account, "to": account, "value": "0x1", "gas": "0x5208"}
            raw = evm.call("g1", "eth_signTransaction", [{**tx, **fees, "nonce": hex(first + n)}])
            body = {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "params": [raw], "id": n}
            answer = requests.post(lb.url, json=body, timeout=30).json()
            assert answer["id"] == n and "result" in answer, answer
            hashes.append(answer["result"])
    finally:
        evm["g2"].die_every = 0
        lb.stop()
    assert evm["g2"].died >= 3  # round_robin sent it about a third of them
    assert len(set(hashes)) == 20
    for name in evm.nodes:
        for tx_hash in hashes:
            receipt = evm.call(name, "eth_getTransactionReceipt", [tx_hash])
            assert receipt is not None and receipt["status"] == "0x1", (name, tx_hash)
    last = int(evm.call("g1", "eth_getTransactionCount", [account, "latest"]), 16)
    assert last == first + 20  # each once: the nonces moved by twenty


def test_final_blocks_and_found_receipts_come_from_the_cache(
    evm: Any, evm_balancer: BalancerProcess
) -> None:
    """The EVM preset's cache on a real node: a block at or below the finalized one (every
    block, on a chain that mines at once) and a receipt once found are kept; ``latest`` and a
    receipt not found yet never are."""
    lb = evm_balancer
    tx_hash = evm.send(_signed_transfer(evm), via="g1")
    block = hex(evm.head("g1"))  # the transfer's block: no client asked for it yet
    time.sleep(0.5)  # a probe round: the new finalized block is known
    first, again = (_evm_call(lb, "eth_getBlockByNumber", [block, False]) for _ in range(2))
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["result"] == again.json()["result"]
    assert first.json()["result"]["transactions"] == [tx_hash]
    for _ in range(2):
        assert _evm_call(lb, "eth_getBlockByNumber", ["latest", False]).headers["x-cache"] == "miss"
    unknown = "0x" + "ab" * 32
    for _ in range(2):
        receipt = _evm_call(lb, "eth_getTransactionReceipt", [unknown])
        assert receipt.json()["result"] is None and receipt.headers["x-cache"] == "miss"
    found = [_evm_call(lb, "eth_getTransactionReceipt", [tx_hash]) for _ in range(2)]
    assert [f.headers["x-cache"] for f in found] == ["miss", "hit"]
    assert found[1].json()["result"]["transactionHash"] == tx_hash


def test_a_receipt_one_node_has_not_seen_is_asked_of_another(
    evm: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The reported bug: a transfer sent through one node, its receipt polled through the
    balancer from a node that never saw it. ``first`` puts that node first for every poll;
    its ``null`` must not stand: another node is asked, and the receipt comes back."""
    config = evm_config(
        evm, order=["g3", "g1", "g2"], strategy={"name": "first"}, max_block_lag=100
    )
    lb = start_balancer(config, tmp_path_factory.mktemp("lb"))
    try:
        evm.hold("g3")
        tx_hash = evm.send(_signed_transfer(evm), via="g1")
        asked = evm["g3"].counts["eth_getTransactionReceipt"]
        got = values(run_client("evm.py", "wait", lb.url, tx_hash))
        assert got["receipt"]["status"] == 1
        assert evm["g3"].counts["eth_getTransactionReceipt"] > asked  # g3 was asked first
        assert evm.call("g3", "eth_getTransactionReceipt", [tx_hash]) is None
    finally:
        evm.release("g3")
        lb.stop()
    assert evm.call("g3", "eth_getTransactionReceipt", [tx_hash]) is not None  # caught up


def _usable(lb: BalancerProcess) -> dict[str, bool]:
    doc = requests.get(lb.url + "/health", timeout=5).json()
    return {n["name"]: n["usable"] for n in doc["nodes"]}


def _wait_usable(
    lb: BalancerProcess, network: Any, expected: dict[str, bool], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while (got := _usable(lb)) != expected:
        heads = {name: network.head(name) for name in network.nodes}
        assert time.monotonic() < deadline, f"usable {got}, expected {expected}; heads {heads}"
        time.sleep(0.1)


def test_a_node_ahead_is_preferred_and_one_behind_excluded_by_block_lag(
    evm: Any, evm_balancer: BalancerProcess
) -> None:
    """As on Steem: the best head sets the pace; a node more than ``max_block_lag`` blocks
    behind it serves nothing until it catches up."""
    lb = evm_balancer
    _wait_usable(lb, evm, {"g1": True, "g2": True, "g3": True})

    seen: list[int] = []

    def served(n: int) -> set[str]:
        nodes = set()
        for i in range(n):
            latest = ["latest", False]  # (a tag: never from the cache)
            body = {"jsonrpc": "2.0", "method": "eth_getBlockByNumber", "params": latest, "id": i}
            answer = requests.post(lb.url, json=body, timeout=10)
            assert answer.status_code == 200 and answer.headers["x-cache"] == "miss"
            nodes.add(answer.headers["x-rpc-node"])
            # ``latest`` is sent as the newest block the balancer knows the node has (its
            # probe's, at most a round old), and never goes back.
            number = int(answer.json()["result"]["number"], 16)
            head = evm.head(answer.headers["x-rpc-node"])
            assert head - 3 <= number <= head
            assert not seen or number >= seen[-1]
            seen.append(number)
        return nodes

    try:
        evm.hold("g2", "g3")  # g1 mines ahead
        evm.mine(3)
        _wait_usable(lb, evm, {"g1": True, "g2": False, "g3": False})
        assert served(20) == {"g1"}
        evm.release("g2", "g3")
        _wait_usable(lb, evm, {"g1": True, "g2": True, "g3": True})

        evm.hold("g3")  # g3 held behind
        evm.mine(3)
        _wait_usable(lb, evm, {"g1": True, "g2": True, "g3": False})
        assert "g3" not in served(20)
        reason = requests.get(lb.url + "/health", timeout=5).json()["nodes"][2]["reason"]
        assert "3 blocks behind" in reason
    finally:
        evm.release("g2", "g3")
    _wait_usable(lb, evm, {"g1": True, "g2": True, "g3": True})
    assert {evm.head(n) for n in evm.nodes} == {evm.head("g1")}
    hashes = {evm.call(n, "eth_getBlockByNumber", ["latest", False])["hash"] for n in evm.nodes}
    assert len(hashes) == 1  # one chain again
