"""EVM chains: latest block (number and timestamp), the finalized block, client version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...jsonrpc import dumps, loads, request_body
from ...keccak import keccak256
from .base import AGAIN, NEVER, Answer, ProbeCall, Reading, failure, json_of, sick_message

_BROADCAST = frozenset(
    {
        "eth_sendRawTransaction",
        "eth_sendTransaction",
        "eth_sendRawTransactionConditional",
        "eth_sendBundle",
        "eth_sendPrivateTransaction",
    }
)


_ALREADY = (b"already known", b"known transaction", b"already imported", b"alreadyknown")
"""How EVM nodes say they have a transaction already (geth's txpool, others')."""

_NONCE_USED = (b"nonce too low", b"oldnonce", b"doesn't have the correct nonce")
"""How EVM nodes refuse a transaction whose nonce is used (by it, or by another)."""

_BY_HASH = frozenset(
    {
        "eth_getTransactionReceipt",
        "eth_getTransactionByHash",
        "eth_getBlockByHash",
        "eth_getTransactionByBlockHashAndIndex",
    }
)
"""Lookups whose ``null`` may only mean that the node asked has not seen the hash yet (a
transaction sent through another node): another node is asked before ``null`` stands."""


_AT_BLOCK = {
    # method -> the position of the block it reads at (a number, a tag, or EIP-1898's object)
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_call": 1,
    "eth_getStorageAt": 2,
    "eth_getProof": 2,
    "eth_feeHistory": 1,
    "eth_getBlockByNumber": 0,
    "eth_getBlockTransactionCountByNumber": 0,
    "eth_getTransactionByBlockNumberAndIndex": 0,
    "eth_getBlockReceipts": 0,
}
_LEFT_OUT_IS_LATEST = frozenset(
    {"eth_getBalance", "eth_getCode", "eth_getTransactionCount", "eth_call", "eth_getStorageAt"}
)
"""Reads whose block may be left out (then it is ``latest``)."""
_TAGS = frozenset({"latest", "safe", "finalized"})
"""The tags resolved to a number (``pending`` and ``earliest`` go as asked)."""
_BLIND = frozenset(
    {
        "eth_blockNumber",
        "eth_chainId",
        "net_version",
        "net_listening",
        "net_peerCount",
        "web3_clientVersion",
        "eth_protocolVersion",
        "eth_syncing",
        "eth_gasPrice",
        "eth_maxPriorityFeePerGas",
        "eth_blobBaseFee",
        "eth_feeHistory",
        "eth_getBlockByNumber",
        "eth_getBlockByHash",
        "eth_getBlockTransactionCountByNumber",
        "eth_getBlockTransactionCountByHash",
        "eth_getUncleCountByBlockNumber",
        "eth_getUncleCountByBlockHash",
    }
)
"""Calls no transaction of a client's changes the answer to (a block is read by its number
or hash: one a client was shown is never answered null, one by hash is asked of another node
before ``null`` stands)."""

_NAMES_BLOCK = {
    "eth_getTransactionReceipt": b'"blockNumber"',
    "eth_getTransactionByHash": b'"blockNumber"',
    "eth_getBlockByNumber": b'"number"',
    "eth_getBlockByHash": b'"number"',
}
"""Answers that show a block exists: where its number is."""


_METHODS = frozenset(
    {
        "eth_blockNumber",
        "eth_chainId",
        "net_version",
        "web3_clientVersion",
        "eth_call",
        "eth_estimateGas",
        "eth_gasPrice",
        "eth_maxPriorityFeePerGas",
        "eth_feeHistory",
        "eth_getBalance",
        "eth_getCode",
        "eth_getStorageAt",
        "eth_getTransactionCount",
        "eth_getBlockByNumber",
        "eth_getBlockByHash",
        "eth_getLogs",
        "eth_getTransactionByHash",
        "eth_getTransactionReceipt",
        "eth_syncing",
    }
    | _BROADCAST
)


@dataclass(frozen=True)
class Evm:
    name: str = "evm"
    block_interval: float = 12.0
    metric_methods: frozenset[str] = _METHODS

    def probe_calls(self) -> tuple[ProbeCall, ...]:
        return (
            ProbeCall("head", request_body("eth_getBlockByNumber", ["latest", False])),
            ProbeCall("final", request_body("eth_getBlockByNumber", ["finalized", False])),
            ProbeCall("version", request_body("web3_clientVersion")),
        )

    def read(self, answers: dict[str, Answer]) -> Reading:
        head = answers.get("head")
        doc = json_of(head)
        block = doc.get("result") if isinstance(doc, dict) else None
        number = _hex(block.get("number")) if isinstance(block, dict) else None
        if number is None or not isinstance(block, dict):
            return Reading(ok=False, error=failure(head, "head"))
        # The finalized block (the merge's finality, or a dev chain's every block): answers at
        # or below it are kept forever by the cache. A node that does not know the tag says
        # nothing of finality, and is no less healthy for it.
        final_doc = json_of(answers.get("final"))
        final = final_doc.get("result") if isinstance(final_doc, dict) else None
        finalized = _hex(final.get("number")) if isinstance(final, dict) else None
        version_doc = json_of(answers.get("version"))
        version = version_doc.get("result") if isinstance(version_doc, dict) else None
        return Reading(
            ok=True,
            head_block=number,
            head_time=_hex(block.get("timestamp")),
            irreversible_block=min(finalized, number) if finalized is not None else None,
            version=version if isinstance(version, str) else None,
            version_doc=version_doc if isinstance(version, str) else None,
            head_hash=_text(block.get("hash")),
            parent_hash=_text(block.get("parentHash")),
        )

    def block_call(self, number: int) -> ProbeCall | None:
        return ProbeCall("block", request_body("eth_getBlockByNumber", [hex(number), False]))

    def block_hash(self, answer: Answer) -> str | None:
        doc = json_of(answer)
        block = doc.get("result") if isinstance(doc, dict) else None
        return _text(block.get("hash")) if isinstance(block, dict) else None

    def is_broadcast(self, method: str) -> bool:
        return method in _BROADCAST

    def head_in(self, body: bytes) -> int | None:
        return None  # answers do not say which block they were read at

    def resend(self, parts: tuple[str, ...]) -> int:
        # A signed transaction is named by its hash: a node that has it says "already known"
        # (geth, erigon, nethermind) or answers its hash again (ganache). A transaction the
        # node signs (eth_sendTransaction) would be a new one: never sent twice.
        return AGAIN if parts[-1] == "eth_sendRawTransaction" else NEVER

    def duplicate(self, body: bytes, params: Any) -> bytes | None:
        lowered = body.lower()
        if not any(phrase in lowered for phrase in _ALREADY):
            return None
        signed = _signed(params)
        try:
            doc = loads(body)
        except ValueError:
            return None
        if signed is None:
            return None
        ident = doc.get("id") if isinstance(doc, dict) else None
        # eth_sendRawTransaction's answer when the node takes it: the transaction's hash.
        return dumps({"jsonrpc": "2.0", "result": "0x" + keccak256(signed).hex(), "id": ident})

    def taken(self, body: bytes, params: Any) -> str | None:
        # A node that has the transaction in a block (it was mined before the resend came)
        # says its nonce is used: geth and erigon "nonce too low", nethermind "OldNonce",
        # ganache "the tx doesn't have the correct nonce". Only its hash can tell whether it
        # is this transaction or another with the same nonce.
        lowered = body.lower()
        if not any(phrase in lowered for phrase in _NONCE_USED):
            return None
        signed = _signed(params)
        return None if signed is None else "0x" + keccak256(signed).hex()

    def cap(self, name: str) -> int:
        return 1_000_000 if name == "eth_getLogs" else 0

    def asks(self, name: str, params: Any, head: int | None) -> int | None:
        """The blocks an ``eth_getLogs`` filter spans (a ``blockHash`` filter: one)."""
        query = params[0] if isinstance(params, list) and params else None
        if isinstance(query, dict) and "blockHash" in query:
            return 1
        span = self.span(name, params, head)
        return None if span is None else max(0, span[1] - span[0] + 1)

    def chunk(self, name: str) -> int:
        # Many providers refuse more than 10,000 blocks (or results) in one log query.
        return 10_000 if name == "eth_getLogs" else 0

    def span(self, name: str, params: Any, head: int | None) -> tuple[int, int] | None:
        query = params[0] if isinstance(params, list) and params else None
        if name != "eth_getLogs" or not isinstance(query, dict) or "blockHash" in query:
            return None
        first = _block(query.get("fromBlock", "latest"), head)
        last = _block(query.get("toBlock", "latest"), head)
        if first is None or last is None:
            return None
        return first, last

    def block_asked(self, name: str, params: Any) -> int | None:
        if name != "eth_getBlockByNumber" or not isinstance(params, list) or not params:
            return None
        return _hex(params[0])

    def reports_head(self, name: str) -> bool:
        return name == "eth_blockNumber"

    def sees_writes(self, name: str) -> bool:
        return name not in _BLIND

    def reported_head(self, body: bytes) -> int | None:
        """``eth_blockNumber``'s result, a hex quantity (``"0x1b4"``)."""
        at = body.find(b'"result"')
        start = body.find(b'"0x', at + 8 if at >= 0 else 0)
        if start < 0:
            return None
        end = body.find(b'"', start + 3)
        if end < 0 or end - start > 67:
            return None
        try:
            return int(body[start + 3 : end], 16)
        except ValueError:
            return None

    def tagged(self, name: str) -> bool:
        return name in _AT_BLOCK or name == "eth_getLogs"

    def pinned(
        self, name: str, params: Any, resolve: Callable[[str], int | None]
    ) -> tuple[Any, int] | None:
        if not isinstance(params, list):
            return None
        if name == "eth_getLogs":
            return _pinned_query(params, resolve)
        at = _AT_BLOCK.get(name)
        if at is None:
            return None
        if len(params) > at:
            tag = params[at]
        elif len(params) == at and name in _LEFT_OUT_IS_LATEST:
            tag = "latest"
        else:
            return None
        if not isinstance(tag, str) or tag not in _TAGS:
            return None
        number = resolve(tag)
        if number is None:
            return None
        return [*params[:at], hex(number), *params[at + 1 :]], number

    def named_block(self, name: str, body: bytes) -> int | None:
        key = _NAMES_BLOCK.get(name)
        return None if key is None else hex_after(body, key)

    def head_result(self, head: int) -> bytes | None:
        return b'"0x%x"' % head

    def empty_is_unsure(
        self, method: str, params: Any, best_head: Callable[[], int | None]
    ) -> bool:
        return method in _BY_HASH

    def is_node_fault(self, error: dict[str, Any]) -> bool:
        # -32005: limit exceeded (rate limited by the provider).
        return error.get("code") == -32005 or sick_message(error)


def _pinned_query(
    params: list[Any], resolve: Callable[[str], int | None]
) -> tuple[Any, int] | None:
    """An ``eth_getLogs`` filter with its tagged bounds (a left-out bound is ``latest``)
    resolved; None when it names none, or when the range would come out backwards (a
    ``fromBlock`` past the number ``latest`` resolves to: the node judges it as asked)."""
    query = params[0] if params else None
    if not isinstance(query, dict) or "blockHash" in query:
        return None
    query = dict(query)
    highest = -1
    for bound in ("fromBlock", "toBlock"):
        tag = query.get(bound, "latest")
        if isinstance(tag, str) and tag in _TAGS:
            number = resolve(tag)
            if number is None:
                return None
            query[bound] = hex(number)
            highest = max(highest, number)
    if highest < 0:
        return None
    first, last = _hex(query.get("fromBlock")), _hex(query.get("toBlock"))
    if first is not None and last is not None and first > last:
        return None
    return [query, *params[1:]], highest


def _signed(params: Any) -> bytes | None:
    """The signed transaction an ``eth_sendRawTransaction`` carries, as bytes."""
    raw = params[0] if isinstance(params, list) and params else None
    if not isinstance(raw, str) or not raw.startswith("0x"):
        return None
    try:
        return bytes.fromhex(raw[2:])
    except ValueError:
        return None


def hex_after(body: bytes, key: bytes) -> int | None:
    """The hex quantity right after ``key`` in a JSON text (``"number":"0x1b4"``, or with
    spaces around the colon), or None."""
    at = body.find(key)
    if at < 0:
        return None
    at += len(key)
    start = body.find(b'"0x', at, at + 8)
    if start < 0 or body[at:start].strip() != b":":
        return None
    end = body.find(b'"', start + 3, start + 70)
    if end < 0:
        return None
    try:
        return int(body[start + 3 : end], 16)
    except ValueError:
        return None


def _block(tag: Any, head: int | None) -> int | None:
    """A block parameter as a number (tags at the head, ``earliest`` at 0)."""
    if tag == "earliest":
        return 0
    if tag in ("latest", "pending", "safe", "finalized"):
        return head
    return _hex(tag)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _hex(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None
