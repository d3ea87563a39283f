"""Drives one real Python Hive client library through rpcbalancer, as an app would.

    .venv-clients/bin/python hive.py CLIENT URL BLOCK

CLIENT: ``lighthive`` (condenser_api.*, JSON-RPC batches) or ``nectar`` (hive-nectar:
database_api.*, block_api.*, bridge.*, network_broadcast_api). BLOCK: an irreversible block
number. Prints one JSON object: for every step, ``{"ok": true, "value": ...}`` or
``{"ok": false, "error": "..."}``; tests/integration/test_clients.py checks the values.

It runs in the clients' own venv (``make clients``), not the project's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

WIF = "5JRaypasxMx1L97ZUX7YuC5Psb5EAbF821kkAGtBj7xCJFQcbLg"
"""A test key known to everyone (the simulated accounts all use it): never for a real chain."""
MEMO = f"through rpcbalancer: {sys.argv[1:2]} {os.getpid()} {time.time()}"
"""Each run's transfer its own (the simulated nodes, as a chain does, refuse a duplicate)."""

results: dict[str, Any] = {}


def step(name: str, fn: Callable[[], Any]) -> None:
    try:
        results[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # the test reads which step failed, and why
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}


def lighthive(url: str, block: int) -> None:
    from lighthive.client import Client
    from lighthive.datastructures import Operation

    client = Client(nodes=[url], keys=[WIF], chain="HIVE", backoff_max_tries=1, read_timeout=10)

    def connect() -> dict[str, Any]:
        config = client.get_config()
        version = client.get_version()
        dgp = client.get_dynamic_global_properties()
        return {
            "config_chain_id": config["HIVE_CHAIN_ID"],
            "version": version["blockchain_version"],
            "head": dgp["head_block_number"],
        }

    def batch() -> list[str]:
        for number in (block, block + 1, block + 2):
            client.get_block(number, batch=True)
        client.get_dynamic_global_properties(batch=True)
        answers = client.process_batch()
        return [a["block_id"] for a in answers[:3]] + [str(answers[3]["head_block_number"])]

    step("connect", connect)
    step("block", lambda: client.get_block(block)["block_id"])
    step(
        "block_appbase",
        lambda: client("block_api").get_block({"block_num": block})["block"]["block_id"],
    )
    client("condenser_api")  # the api a call names sticks to the client until changed
    step("account", lambda: _account(client.get_accounts(["alice"])[0]))
    step("content", lambda: client.get_content("alice", "hello")["title"])
    step("batch", batch)
    op = Operation("transfer", {"from": "alice", "to": "bob", "amount": "1.000 HIVE", "memo": MEMO})
    step("broadcast", lambda: client.broadcast_sync(op))


def nectar(url: str, block: int) -> None:
    from nectar import Hive
    from nectar.account import Account
    from nectar.block import Block
    from nectar.comment import Comment

    hive: Any = None

    def connect() -> dict[str, Any]:
        nonlocal hive
        hive = Hive(node=[url], keys=[WIF], num_retries=2, num_retries_call=2, timeout=10)
        dgp = hive.get_dynamic_global_properties(use_stored_data=False)
        return {
            "config_chain_id": hive.chain_params["chain_id"],
            "prefix": hive.chain_params["prefix"],
            "head": dgp["head_block_number"],
        }

    def batch() -> list[str]:
        asked = [{"block_num": n} for n in (block, block + 1, block + 2)]
        answers = hive.rpc.get_block(asked, api="block_api")
        return [(a.get("block") or a)["block_id"] for a in answers]

    def broadcast() -> Any:
        done = Account("alice", blockchain_instance=hive).transfer("bob", 1, "HIVE", MEMO)
        return done.get("trx_id") or done.get("id") or done

    step("connect", connect)
    step("block", lambda: dict(Block(block, blockchain_instance=hive))["block_id"])
    step("account", lambda: _account(Account("alice", blockchain_instance=hive)))
    step("content", lambda: Comment("@alice/hello", blockchain_instance=hive)["title"])
    step("batch", batch)
    step("broadcast", broadcast)


def _account(account: Any) -> dict[str, Any]:
    return {
        "name": account["name"],
        "balance": str(account["balance"]),
        "key": account["active"]["key_auths"][0][0],
    }


def nectar_stream(url: str, seconds: float) -> dict[str, Any]:
    """nectar's ``Blockchain.blocks`` in head mode for ``seconds``: the block numbers it gave,
    and the heads its own ``get_current_block_num`` saw meanwhile."""
    from nectar import Hive
    from nectar.blockchain import Blockchain

    hive = Hive(node=[url], num_retries=2, num_retries_call=2, timeout=10)
    chain = Blockchain(blockchain_instance=hive, mode="head")
    out: dict[str, Any] = {"blocks": [], "heads": [], "errors": []}
    end = time.monotonic() + seconds
    try:
        for block in chain.blocks():
            out["blocks"].append(int(block.block_num))
            out["heads"].append(chain.get_current_block_num())
            if time.monotonic() >= end:
                break
    except Exception as exc:  # the test reads what went wrong
        out["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
    return out


def main() -> None:
    if sys.argv[1] == "nectar-stream":
        print(json.dumps(nectar_stream(sys.argv[2], float(sys.argv[3]))))
        return
    client, url, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
    drivers = {"lighthive": lighthive, "nectar": nectar}
    if client not in drivers:
        sys.exit(f"unknown client {client}; known: {', '.join(drivers)}")
    drivers[client](url, block)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
