"""The transactions a simulated fleet's nodes have taken, shared as a real network shares
them (see :class:`Mempool`)."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import orjson


class Mempool:
    """The transactions a fleet's nodes have taken, shared by the nodes of one fleet as a
    real network shares them: a transaction is on the chain once, and a node asked for one
    that any node took answers as steemd does, "Duplicate transaction check failed"."""

    def __init__(self) -> None:
        self.transactions: dict[str, int] = {}
        """Each transaction's id and the block it went into."""
        self.taken_by: dict[str, str] = {}
        """The node that took each transaction (it sees it at once; the others once their
        head reaches its block)."""
        self.transfers: list[tuple[str, str, str, float]] = []
        """The transfers taken: transaction id, from, to, amount (of the main token)."""
        self.sent: Counter[str] = Counter()
        """How many times each transaction was broadcast to a node."""
        self.replaced: set[str] = set()
        """Signed EVM transactions whose nonce another transaction used: every node refuses
        them ("nonce too low"), and none has them."""

    def __repr__(self) -> str:
        return f"<Mempool {len(self.transactions)} transactions>"

    def __len__(self) -> int:
        return len(self.transactions)

    def take(
        self, tx: Any, block: int, node: str = "", txid: str | None = None
    ) -> tuple[str, bool]:
        """A broadcast of ``tx`` to ``node``: its id (``txid``, else made from ``tx``), and
        whether it is new (False: a duplicate)."""
        if txid is None:
            txid = hashlib.sha1(orjson.dumps(tx, option=orjson.OPT_SORT_KEYS)).hexdigest()
        self.sent[txid] += 1
        if txid in self.transactions:
            return txid, False
        self.transactions[txid] = block
        self.taken_by[txid] = node
        operations = tx.get("operations") if isinstance(tx, dict) else None
        for op in operations if isinstance(operations, list) else []:
            if isinstance(op, list) and len(op) == 2 and op[0] == "transfer":
                value = op[1] if isinstance(op[1], dict) else {}
                amount = str(value.get("amount", "0")).split(" ")[0]
                try:
                    moved = float(amount)
                except ValueError:
                    continue
                self.transfers.append((txid, str(value.get("from")), str(value.get("to")), moved))
        return txid, True

    def history(self, account: str, node: str, head: int) -> list[list[Any]]:
        """``account``'s transfers that ``node`` (at ``head``) has seen, as
        ``get_account_history`` lists them (``[index, {trx_id, block, op}]``)."""
        entries: list[list[Any]] = []
        for txid, sender, receiver, amount in self.transfers:
            if self.taken_by[txid] != node and head < self.transactions[txid]:
                continue
            if account in (sender, receiver):
                op = {"from": sender, "to": receiver, "amount": f"{amount:.3f} STEEM", "memo": ""}
                entry = {"trx_id": txid, "block": self.transactions[txid], "op": ["transfer", op]}
                entries.append([len(entries), entry])
        return entries

    def in_block(self, block: int) -> list[str]:
        """The transactions that went into ``block``."""
        return [txid for txid, number in self.transactions.items() if number == block]

    def moved(self, account: str, node: str, head: int) -> float:
        """What the transfers ``node`` (at ``head``) has seen changed ``account``'s balance."""
        total = 0.0
        for txid, sender, receiver, amount in self.transfers:
            if self.taken_by[txid] != node and head < self.transactions[txid]:
                continue  # not in a block this node has
            if receiver == account:
                total += amount
            if sender == account:
                total -= amount
        return total
