"""Drives web3.py through rpcbalancer in front of real EVM nodes (ganache), as an app would.

    .venv-clients/bin/python evm.py all URL PRIVATE_KEY
    .venv-clients/bin/python evm.py wait URL TX_HASH

``all``: chain id, block number, blocks by number and hash, a balance, a contract deployed
and a transaction sent (signed here, sent once), their receipts waited for, ``eth_call``,
``eth_getLogs`` and a batch. ``wait``: only waits for a receipt (a transaction sent
elsewhere). Prints one JSON object: for every step, ``{"ok": true, "value": ...}`` or
``{"ok": false, "error": "..."}``, and the hashes it sent.

It runs in the clients' own venv (``make clients``), not the project's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from eth_account import Account
from web3 import Web3

TOPIC = "11" * 32
RUNTIME = "602a600052" + "7f" + TOPIC + "60206000a1" + "60206000f3"
INIT = "0x6030600c60003960306000f3" + RUNTIME
"""A contract of our own: every call returns 42 and emits one log with ``TOPIC``."""

results: dict[str, Any] = {"sent": []}


def step(name: str, fn: Callable[[], Any]) -> None:
    try:
        results[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # the test reads which step failed, and why
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}


def everything(w3: Web3, key: str) -> None:
    account = Account.from_key(key)
    state: dict[str, Any] = {}

    def send(tx: dict[str, Any]) -> Any:
        tx.update(nonce=w3.eth.get_transaction_count(account.address), chainId=w3.eth.chain_id)
        sent = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        results["sent"].append("0x" + sent.hex().removeprefix("0x"))
        return w3.eth.wait_for_transaction_receipt(sent, timeout=30, poll_latency=0.1)

    def deploy() -> dict[str, Any]:
        receipt = send({"data": INIT, "gas": 200_000, "gasPrice": w3.eth.gas_price})
        state["contract"] = receipt["contractAddress"]
        return {"status": receipt["status"], "address": receipt["contractAddress"]}

    def transaction() -> dict[str, Any]:
        fees = {"maxFeePerGas": 2 * 10**10, "maxPriorityFeePerGas": 10**9}
        receipt = send({"to": state["contract"], "data": "0x", "gas": 100_000, **fees})
        return {"status": receipt["status"], "logs": len(receipt["logs"])}

    def logs() -> int:
        query = {"fromBlock": 0, "toBlock": "latest", "address": state["contract"]}
        return len(w3.eth.get_logs({**query, "topics": ["0x" + TOPIC]}))

    def batch() -> list[Any]:
        with w3.batch_requests() as b:
            b.add(w3.eth.get_block(1))
            b.add(w3.eth.get_balance(account.address))
            b.add(w3.eth.get_block("latest"))
            block, balance, latest = b.execute()
        return [block["number"], balance > 0, latest["number"] >= 1]

    step("connected", w3.is_connected)
    step("chain_id", lambda: w3.eth.chain_id)
    step("block_number", lambda: w3.eth.block_number)
    step("block_by_number", lambda: "0x" + w3.eth.get_block(1)["hash"].hex().removeprefix("0x"))
    step("block_by_hash", lambda: w3.eth.get_block(w3.eth.get_block(1)["hash"])["number"])
    step("balance", lambda: str(w3.eth.get_balance(account.address)))
    step("deploy", deploy)
    step(
        "call", lambda: int.from_bytes(w3.eth.call({"to": state["contract"], "data": "0x"}), "big")
    )
    step("transaction", transaction)
    step("logs", logs)
    step("batch", batch)


def wait(w3: Web3, tx_hash: str) -> None:
    def receipt() -> dict[str, Any]:
        got = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=20, poll_latency=0.1)  # type: ignore[arg-type]
        return {"status": got["status"], "block": got["blockNumber"]}

    step("receipt", receipt)


def main() -> None:
    mode, url, arg = sys.argv[1:4]
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 20}))
    if mode == "all":
        everything(w3, arg)
    elif mode == "wait":
        wait(w3, arg)
    else:
        sys.exit(f"unknown mode {mode}; known: all, wait")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
