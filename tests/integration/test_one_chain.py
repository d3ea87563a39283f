"""One chain, whatever node answers: real clients through a real balancer in front of a
fleet whose nodes drift (each 0-6 blocks behind the head, changing every 1.5 s, all within
the lag rule), as apps that follow the chain use it.

- Pollers of ``get_dynamic_global_properties``: the head never goes back, 0 in 10,000 calls
  from four clients at once, with ``fastest``, ``round_robin`` and ``random``.
- dsteem's and dhive's block streams (``blockchain.getBlocks``, polling the head and reading
  every block up to it) and nectar's (``Blockchain.blocks`` in head mode), and ethers' block
  events through real ganache nodes held back and released (one of them twice on a fork of
  its own at the head, then reorganised), read every block exactly once, in order, never a
  null, on one chain, all at once for a minute; their head pollers never see the head go
  back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread

from .test_clients import _command, run_client, start_balancer

DGP = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "params": []}


@pytest.fixture(scope="module")
def drifting() -> Iterator[FleetThread]:
    """Three Steem nodes, one block a second, whose lags drift from 0 to 6 blocks (the
    lagging ones the faster) until the module ends."""
    yield from _drifting("steem")


@pytest.fixture(scope="module")
def drifting_hive() -> Iterator[FleetThread]:
    yield from _drifting("hive")


def _drifting(chain: str) -> Iterator[FleetThread]:
    behaviours = {
        "a": Behaviour(latency=0.004, block_interval=1.0),
        "b": Behaviour(latency=0.002, lag=3, block_interval=1.0),
        "c": Behaviour(latency=0.001, lag=6, block_interval=1.0),
    }
    stop = threading.Event()
    with FleetThread(behaviours, chain=chain) as fleet:

        def drift() -> None:
            rng = random.Random(21)
            while not stop.wait(1.5):
                for name in behaviours:
                    fleet.set(name, lag=rng.randint(0, 6))

        mover = threading.Thread(target=drift, name="drift", daemon=True)
        mover.start()
        try:
            yield fleet
        finally:
            stop.set()
            mover.join(5)


def went_back(heads: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(heads) if after < before)


@pytest.mark.parametrize("strategy", ["fastest", "round_robin", "random"])
def test_pollers_never_see_the_head_go_back(
    drifting: FleetThread, strategy: str, tmp_path: Path
) -> None:
    lb = start_balancer({"nodes": drifting.urls, "strategy": strategy}, tmp_path)
    try:
        seen: list[list[int]] = [[] for _ in range(4)]

        def poller(heads: list[int]) -> None:
            with requests.Session() as session:
                for i in range(2500):
                    doc = session.post(lb.url, json={**DGP, "id": i}, timeout=10).json()
                    heads.append(doc["result"]["head_block_number"])

        threads = [threading.Thread(target=poller, args=(heads,)) for heads in seen]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [len(heads) for heads in seen] == [2500] * 4
        assert [went_back(heads) for heads in seen] == [0, 0, 0, 0]
        assert all(heads[-1] > heads[0] for heads in seen)  # the chain moved meanwhile
        status = requests.get(lb.url + "/status.json", timeout=10).json()["balancer"]
        assert status["heads_released"] == 0
        if strategy != "fastest":  # the nodes did answer lower heads: they were held
            assert status["heads_held"] > 0
    finally:
        lb.stop()


@pytest.fixture(scope="module")
def drifting_evm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three real ganache nodes (tests/ganache.py) of one chain."""
    from ..ganache import GANACHE, EvmNetwork

    _command("blocks.js")  # node and node_modules, or skip/fail
    assert GANACHE.is_file()
    with EvmNetwork(["g1", "g2", "g3"], tmp_path_factory.mktemp("ganache")) as network:
        network.mine(2)
        yield network


FORKS = ((20, 44), (80, 104))
"""Blocks (half-seconds) when g3 goes onto a fork of its own, and when it reorganises."""


def _evm_drift(network: Any, stop: threading.Event) -> None:
    """Two blocks a second; now and then a node is held back (it gets no blocks), then
    released after a few blocks (it catches up): never all at once, never more than 5 behind.
    Twice (:data:`FORKS`) g3 goes onto a fork of its own at the head for 12 s, a block of its
    own beside each of the network's, and then reorganises onto the network's chain; no
    node is held back meanwhile (its two peers are the majority)."""
    rng = random.Random(5)
    names = list(network.nodes)
    held: dict[str, int] = {}
    tick = 0
    while not stop.wait(0.5):
        tick += 1
        network.mine(1)
        forking = any(start <= tick < end for start, end in FORKS)
        if tick in (start for start, _ in FORKS):
            network.release(*held)
            held.clear()
            network.fork("g3")
        if forking:
            network.mine_fork("g3")
            continue
        if tick in (end for _, end in FORKS):
            network.rejoin("g3")
        for name in list(held):
            held[name] += 1
            if held[name] >= 5 or rng.random() < 0.3:
                del held[name]
                network.release(name)
        live = [name for name in names if name not in held]
        if len(live) > 1 and rng.random() < 0.4:
            name = rng.choice(live)
            held[name] = 0
            network.hold(name)
    if network["g3"].fork_base is not None:
        network.rejoin("g3")
    network.release(*names)


@pytest.mark.timeout(300)
def test_block_streams_read_every_block_once_in_order_for_a_minute(
    drifting: FleetThread,
    drifting_hive: FleetThread,
    drifting_evm: Any,
    tmp_path: Path,
) -> None:
    """dsteem's and dhive's ``blockchain.getBlocks`` and nectar's ``Blockchain.blocks``
    through drifting fleets, and ethers' block events through ganache nodes held back and
    released, one of them twice on a fork at the head and then reorganised, all at once for a
    minute: every block once, in order, never a null, each block's parent the block read
    before it (but where a fork's block was read before the probes found it: at most its
    first three, as a node's own reorganisation at the head would show); the head pollers
    beside them never see the head go back."""
    seconds = "60"
    configs = {
        "steem": {"nodes": drifting.urls, "strategy": "round_robin"},
        "hive": {"chain": "hive", "nodes": drifting_hive.urls, "strategy": "round_robin"},
        "evm": {
            "chain": "evm",
            "nodes": [{"url": node.url, "name": name} for name, node in drifting_evm.nodes.items()],
            "strategy": "round_robin",
            "probe": {"interval": 0.5},
            "max_block_lag": 6,
            "max_head_age": 3600,
        },
    }
    got: dict[str, Any] = {}
    stop = threading.Event()
    mover = threading.Thread(target=_evm_drift, args=(drifting_evm, stop), daemon=True)
    with contextlib.ExitStack() as stack:
        lbs = {}
        for name, config in configs.items():
            (tmp_path / name).mkdir()
            lbs[name] = start_balancer(config, tmp_path / name)
            stack.callback(lbs[name].stop)
        runs = {
            "dsteem": ("stream.js", "dsteem", lbs["steem"].url, seconds),
            "dhive": ("stream.js", "dhive", lbs["steem"].url, seconds),
            "nectar": ("hive.py", "nectar-stream", lbs["hive"].url, seconds),
            "ethers": ("blocks.js", lbs["evm"].url, seconds),
        }
        mover.start()
        try:
            with ThreadPoolExecutor(len(runs)) as pool:
                futures = {
                    name: pool.submit(run_client, *args, timeout=180) for name, args in runs.items()
                }
                got = {name: future.result() for name, future in futures.items()}
        finally:
            stop.set()
            mover.join(30)
        metrics = requests.get(lbs["evm"].url + "/metrics", timeout=10).text
    for name in ("dsteem", "dhive"):
        run = got[name]
        assert run["errors"] == [], (name, run["errors"])
        assert run["nulls"] == 0, name  # a block it was told exists is never null
        blocks = run["blocks"]
        assert len(blocks) >= 45, (name, blocks)  # about one a second for a minute
        assert blocks == list(range(blocks[0], blocks[0] + len(blocks))), (name, blocks)
        assert blocks == run["asked"], name
        assert len(run["heads"]) > 150 and went_back(run["heads"]) == 0, name
    nectar = got["nectar"]
    assert nectar["errors"] == [], nectar["errors"]
    blocks = nectar["blocks"]
    assert len(blocks) >= 45, blocks
    assert blocks == list(range(blocks[0], blocks[0] + len(blocks))), json.dumps(blocks)
    assert went_back(nectar["heads"]) == 0
    ethers = got["ethers"]
    assert ethers["errors"] == [], ethers["errors"]
    assert ethers["nulls"] == 0
    emitted = ethers["emitted"]
    assert len(emitted) >= 80, emitted  # two blocks a second for a minute
    assert emitted == list(range(emitted[0], emitted[0] + len(emitted))), json.dumps(emitted)
    read = ethers["blocks"]
    assert [number for number, _, _ in read] == emitted
    # g3's forks: a block of one may be read only before the probes found it, within two
    # probe intervals of its start (its first 3 blocks: what one node's own reorganisation
    # at the head shows a client), never later
    forks = drifting_evm["g3"].forked
    assert len(forks) == len(FORKS)
    place = {digest: (n, i) for n, blocks in enumerate(forks) for i, digest in enumerate(blocks)}
    from_forks = [place[digest] for _, digest, _ in read if digest in place]
    assert all(i < 3 for _, i in from_forks), from_forks
    for (_, hash_before, _), (_, _, parent) in itertools.pairwise(read):
        assert parent == hash_before or hash_before in place  # one chain, but for that
    last, last_hash, _ = read[-1]
    assert drifting_evm.call("g1", "eth_getBlockByNumber", [hex(last), False])["hash"] == last_hash
    # g3's two forks at the head were found (and it was back after each: one chain was read)
    found = re.search(r"^rpcbalancer_forks_found_total (\S+)$", metrics, re.MULTILINE)
    assert found is not None and float(found.group(1)) >= len(FORKS), metrics[-2000:]
