"""One chain, whatever node answers: real clients through a real balancer in front of a
fleet whose nodes drift (each 0-6 blocks behind the head, changing every 1.5 s, all within
the lag rule), as apps that follow the chain use it.

- Pollers of ``get_dynamic_global_properties``: the head never goes back, 0 in 10,000 calls
  from four clients at once, with ``fastest``, ``round_robin`` and ``random``.
- dsteem's and dhive's block streams (``blockchain.getBlocks``, polling the head and reading
  every block up to it) and nectar's (``Blockchain.blocks`` in head mode) read every block
  exactly once, in order, never a null; their head pollers never see the head go back.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rpcbalancer.sim import Behaviour, FleetThread

from .test_clients import run_client, start_balancer

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


@pytest.mark.parametrize("client", ["dsteem", "dhive"])
def test_block_streams_read_every_block_once_in_order(
    drifting: FleetThread, client: str, tmp_path: Path
) -> None:
    lb = start_balancer({"nodes": drifting.urls, "strategy": "round_robin"}, tmp_path)
    try:
        got: dict[str, Any] = run_client("stream.js", client, lb.url, "20", timeout=90)
    finally:
        lb.stop()
    assert got["errors"] == [], got["errors"]
    assert got["nulls"] == 0  # a block it was told exists is never null
    blocks = got["blocks"]
    assert len(blocks) >= 12, blocks  # about one a second for 20 s
    assert blocks == list(range(blocks[0], blocks[0] + len(blocks))), json.dumps(blocks)
    assert blocks == got["asked"]
    assert len(got["heads"]) > 50 and went_back(got["heads"]) == 0


def test_nectars_block_stream_reads_every_block_once_in_order(
    drifting_hive: FleetThread, tmp_path: Path
) -> None:
    lb = start_balancer(
        {"chain": "hive", "nodes": drifting_hive.urls, "strategy": "round_robin"}, tmp_path
    )
    try:
        got: dict[str, Any] = run_client("hive.py", "nectar-stream", lb.url, "20", timeout=90)
    finally:
        lb.stop()
    assert got["errors"] == [], got["errors"]
    blocks = got["blocks"]
    assert len(blocks) >= 12, blocks
    assert blocks == list(range(blocks[0], blocks[0] + len(blocks))), json.dumps(blocks)
    assert went_back(got["heads"]) == 0
