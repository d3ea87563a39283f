"""A fake API node that answers like a Steem node behind jussi (or an EVM node).

It serves ``GET /`` (jussi status with ``jussi_num``), JSON-RPC calls and batches (the
Steem/Hive API real client libraries use, in :mod:`.steem_api`; ``call`` wrapping; broadcasts;
a hivemind backend's social calls; a few EVM calls), and misbehaves on demand: slow,
heavy-tailed, failing with 503 HTML, hanging, answering with a lock-timeout error, lagging
the chain head, on a fork, or dead (not listening).

The chain head advances in real time (one block per ``block_interval``), identical on every
fake node of a run, so a node's staleness is exactly its ``lag``. Behaviour can be changed
while the node runs; every node counts the requests it got, per method.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from ..keccak import keccak256
from . import websocket
from .mempool import Mempool
from .steem_api import MISSING, NO_HEADER, UNKNOWN_TRANSACTION, SteemApi

GENESIS_BLOCK = 90_000_000
LOG_EVERY = 1000
"""A simulated EVM chain has one log every this many blocks."""
LOGS_RANGE = 10_000
"""Blocks a simulated EVM node serves logs for in one query, at most."""
_EPOCH = 1_760_000_000.0  # a fixed origin so every fake node agrees on the head


@dataclass(frozen=True)
class Behaviour:
    latency: float = 0.002
    """Median answer time, seconds."""
    jitter: float = 0.0
    """Sigma of a log-normal spread around the median (0: always the median)."""
    tail_rate: float = 0.0
    tail_latency: float = 0.8
    fail_rate: float = 0.0
    """Share of requests answered 503 with an HTML page."""
    sick_rate: float = 0.0
    """Share of JSON-RPC requests answered with a lock-timeout error."""
    hang_rate: float = 0.0
    """Share of requests never answered."""
    lag: int = 0
    """Blocks behind the chain head."""
    stalled_at: int = 0
    """When set, the node stopped following the chain at this block: its head stays there
    (as a stalled node's does) until set back to 0."""
    fork: int = 0
    """This node is on a fork for its last ``fork`` blocks: it serves other blocks (other
    ids) at those reversible heights, until set back to 0 (it converges)."""
    fail_methods: str = ""
    """Comma-separated JSON-RPC methods answered 503 with an HTML page (the whole request)."""
    version: str = ""
    """The version the node reports (empty: its chain's usual one, ``0.23.1`` on Steem)."""
    status: str = "OK"
    block_interval: float = 3.0
    corrupt_rate: float = 0.0
    """Share of block answers whose ``previous`` is not the block before (a corrupted node:
    its blocks do not link to the chain)."""
    broadcast_die_rate: float = 0.0
    """Share of the new transactions this node takes into the mempool and then dies on, its
    connection dropped before it answers (the transaction is on the chain; the client does
    not know it)."""


def chain_head(now: float, block_interval: float = 3.0) -> int:
    return GENESIS_BLOCK + int((now - _EPOCH) / block_interval)


def block_time(number: int, block_interval: float = 3.0) -> float:
    return _EPOCH + (number - GENESIS_BLOCK) * block_interval


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class _Dies(Exception):
    """The node dies in the middle of a request: no answer."""


class FakeNode:
    """One fake node on a loopback address; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        name: str,
        behaviour: Behaviour | None = None,
        *,
        chain: str = "steem",
        seed: int | None = None,
        host: str = "127.0.0.1",
        mempool: Mempool | None = None,
    ) -> None:
        self.name = name
        self.mempool = mempool if mempool is not None else Mempool()
        """The transactions taken (shared with the other nodes of its fleet, when given)."""
        self.host = host
        self.last_headers: dict[str, str] = {}
        self.header_values: dict[str, set[str]] = {}
        """Every value each header had in the requests this node got (lower-case names; at
        most 16 values a name), probes included."""
        self.behaviour = behaviour or Behaviour()
        self.chain = chain
        self.api = SteemApi(chain, lambda number: block_time(number, self.behaviour.block_interval))
        """The Steem/Hive API this node answers (``chain`` ``steem``, ``hive``, ``blurt``,
        ``full``; ``hivemind`` uses its posts)."""
        self.rng = random.Random(seed)
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.tagged = 0
        """JSON-RPC members whose id is a string starting with ``b-`` (a benchmark's own)."""
        self.broadcasts: list[Any] = []
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        state = "up" if self._runner else "down"
        return f"<FakeNode {self.name} :{self.port} {state} {self.behaviour}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set(self, **changes: Any) -> None:
        """Change the behaviour while running (any :class:`Behaviour` field)."""
        self.behaviour = replace(self.behaviour, **changes)

    def head(self) -> int:
        b = self.behaviour
        head = chain_head(time.time(), b.block_interval) - b.lag
        return min(head, b.stalled_at) if b.stalled_at else head

    async def start(self, port: int | None = None) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("GET", "/{tail:.*}", self._get)
        app.router.add_route("POST", "/{tail:.*}", self._post)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.host,
            port if port is not None else self.port,
            reuse_address=True,
        )
        await site.start()
        server = site._server
        assert server is not None
        sockets = list(getattr(server, "sockets", None) or [])
        self.port = int(sockets[0].getsockname()[1])
        self._runner = runner

    async def stop(self) -> None:
        """Die: stop listening and drop every connection (clients see refused/reset)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def revive(self) -> None:
        if self._runner is None:
            await self.start(self.port)

    # -- behaviour ----------------------------------------------------------------------

    async def _misbehave(self) -> web.Response | None:
        b = self.behaviour
        roll = self.rng.random()
        if roll < b.hang_rate:
            await asyncio.sleep(3600)
        delay = b.latency * (math.exp(b.jitter * self.rng.gauss(0, 1)) if b.jitter else 1.0)
        if self.rng.random() < b.tail_rate:
            delay = b.tail_latency
        if delay > 0:
            await asyncio.sleep(delay)
        if self.rng.random() < b.fail_rate:
            return _unavailable()
        return None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if self.chain == "evm" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket.serve(self, request)
        if request.path == "/__stats__":  # for the benchmark: never misbehaves
            taken = [tx for tx, node in self.mempool.taken_by.items() if node == self.name]
            return web.json_response(
                {"tagged": self.tagged, "counts": dict(self.counts), "taken": taken}
            )
        self.counts["GET " + request.path] += 1
        self._note_headers(request)
        failed = await self._misbehave()
        if failed is not None:
            return failed
        if request.path != "/":
            return web.json_response({"error": "not found", "path": request.path_qs}, status=404)
        now = time.time()
        return web.json_response(
            {
                "status": self.behaviour.status,
                "datetime": _iso(now),
                "source_commit": "0" * 40,
                "docker_tag": "latest",
                "jussi_num": self.head(),
            }
        )

    def _note_headers(self, request: web.Request) -> None:
        seen = self.header_values
        for name, value in request.headers.items():
            values = seen.setdefault(name.lower(), set())
            if len(values) < 16:
                values.add(value)

    async def _post(self, request: web.Request) -> web.Response:
        self.last_headers = dict(request.headers)
        self._note_headers(request)
        raw = await request.read()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.counts["<parse error>"] += 1
            return _json(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse Error"}}
            )
        members = doc if isinstance(doc, list) else [doc]
        for member in members:
            self.counts[_method(member)] += 1
            ident = member.get("id") if isinstance(member, dict) else None
            if isinstance(ident, str) and ident.startswith("b-"):
                self.tagged += 1
            if _method(member).startswith(
                ("condenser_api.broadcast", "network_broadcast_api", "broadcast_transaction")
            ):
                self.broadcasts.append(member)
        failed = await self._misbehave()
        if failed is None and self.behaviour.fail_methods:
            broken = self.behaviour.fail_methods.split(",")
            if any(_method(m).rpartition(".")[2] in broken for m in members):
                failed = _unavailable()
        if failed is not None:
            return failed
        try:
            answers = [self._answer(m) for m in members]
        except _Dies:
            if request.transport is not None:
                request.transport.abort()
            await asyncio.sleep(3600)  # (cancelled with the connection)
            raise
        return _json(answers if isinstance(doc, list) else answers[0])

    def answer_member(self, member: Any) -> dict[str, Any]:
        """One JSON-RPC call's answer (no latency, faults or death: the WebSocket's)."""
        return self._answer(member)

    def _answer(self, member: Any) -> dict[str, Any]:
        ident = member.get("id") if isinstance(member, dict) else None
        method = _method(member)
        if self.behaviour.sick_rate and self.rng.random() < self.behaviour.sick_rate:
            return {
                "jsonrpc": "2.0",
                "id": ident,
                "error": {"code": -32003, "message": "Unable to acquire database lock"},
            }
        params = member.get("params") if isinstance(member, dict) else None
        if member.get("method") == "call" and isinstance(params, list):
            params = params[2] if len(params) > 2 else []
        if self.chain != "evm" and method.rpartition(".")[2].startswith("broadcast_transaction"):
            return self._broadcast(ident, method, params)
        if self.chain == "evm" and method == "eth_sendRawTransaction":
            return self._send_raw(ident, params)
        if self.chain == "evm" and method == "eth_getLogs":
            return self._logs(ident, params)
        result = self._result(method, params)
        if method.endswith("get_accounts") and self.mempool.transfers:
            self._with_transfers(result)
        if self.behaviour.corrupt_rate and method.endswith("get_block"):
            self._corrupt(result)
        if result is MISSING:
            return {
                "jsonrpc": "2.0",
                "id": ident,
                "error": {"code": -32601, "message": f"Method not found: {method}"},
            }
        if result is NO_HEADER:  # a block this node does not have yet, as geth says it
            return {
                "jsonrpc": "2.0",
                "id": ident,
                "error": {"code": -32000, "message": "header not found"},
            }
        if result is UNKNOWN_TRANSACTION:
            message = "Assert Exception:itr != idx.end(): Unknown Transaction"
            return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32000, "message": message}}
        return {"jsonrpc": "2.0", "id": ident, "result": result}

    def _broadcast(self, ident: Any, method: str, params: Any) -> dict[str, Any]:
        """A transaction: into the shared mempool once; a duplicate is refused as steemd
        refuses it; a node may take it and die before answering."""
        tx = params[0] if isinstance(params, list) and params else params
        if isinstance(tx, dict) and "trx" in tx:
            tx = tx["trx"]
        head = self.head()
        txid, new = self.mempool.take(tx, head + 1, self.name)
        if not new:
            message = (
                "Assert Exception:trx_idx.indices().get<by_trx_id>().find(trx_id) == "
                "trx_idx.indices().get<by_trx_id>().end(): Duplicate transaction check failed"
            )
            return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32000, "message": message}}
        if self.behaviour.broadcast_die_rate and (
            self.rng.random() < self.behaviour.broadcast_die_rate
        ):
            raise _Dies
        if method.endswith("synchronous"):
            result: Any = {"id": txid, "block_num": head + 1, "trx_num": 0, "expired": False}
        else:
            result = {}
        return {"jsonrpc": "2.0", "id": ident, "result": result}

    def _send_raw(self, ident: Any, params: Any) -> dict[str, Any]:
        """A signed EVM transaction: named by its hash; a node that has it says so as geth
        does ("already known"); a node may take it and die before answering."""
        raw = params[0] if isinstance(params, list) and params else ""
        try:
            signed = bytes.fromhex(str(raw).removeprefix("0x"))
        except ValueError:
            error = {"code": -32000, "message": "rlp: invalid transaction"}
            return {"jsonrpc": "2.0", "id": ident, "error": error}
        txhash = "0x" + keccak256(signed).hex()
        if raw in self.mempool.replaced:
            error = {"code": -32000, "message": "nonce too low: next nonce 8, tx nonce 7"}
            return {"jsonrpc": "2.0", "id": ident, "error": error}
        _, new = self.mempool.take(raw, self.head() + 1, self.name, txhash)
        if not new:
            if self.mempool.transactions[txhash] <= self.head():  # in a block: its nonce used
                message = "nonce too low: next nonce 8, tx nonce 7"
            else:
                message = "already known"
            error = {"code": -32000, "message": message}
            return {"jsonrpc": "2.0", "id": ident, "error": error}
        if self.behaviour.broadcast_die_rate and (
            self.rng.random() < self.behaviour.broadcast_die_rate
        ):
            raise _Dies
        return {"jsonrpc": "2.0", "id": ident, "result": txhash}

    def _logs(self, ident: Any, params: Any) -> dict[str, Any]:
        """One log every :data:`LOG_EVERY` blocks; more than :data:`LOGS_RANGE` blocks in one
        query refused, as providers refuse it."""
        query = params[0] if isinstance(params, list) and params else {}
        head = self.head()
        span = []
        for key in ("fromBlock", "toBlock"):
            tag = query.get(key, "latest") if isinstance(query, dict) else "latest"
            try:
                span.append(head if tag in ("latest", "pending") else int(str(tag), 16))
            except ValueError:
                error = {"code": -32602, "message": f"invalid {key}"}
                return {"jsonrpc": "2.0", "id": ident, "error": error}
        first, last = span
        if last - first + 1 > LOGS_RANGE:
            message = f"block range is too wide (more than {LOGS_RANGE} blocks)"
            error = {"code": -32005, "message": message}
            return {"jsonrpc": "2.0", "id": ident, "error": error}
        start = -(-first // LOG_EVERY) * LOG_EVERY
        logs = [
            {
                "address": "0x" + "11" * 20,
                "blockNumber": hex(n),
                "logIndex": "0x0",
                "transactionHash": "0x" + f"{n:064x}",
                "topics": [],
                "data": "0x",
            }
            for n in range(start, min(last, head) + 1, LOG_EVERY)
        ]
        return {"jsonrpc": "2.0", "id": ident, "result": logs}

    def _corrupt(self, result: Any) -> None:
        """A block whose ``previous`` is wrong (its own number still reads right)."""
        if self.rng.random() >= self.behaviour.corrupt_rate or not isinstance(result, dict):
            return
        inner = result.get("block")
        block: dict[str, Any] = inner if isinstance(inner, dict) else result
        previous = block.get("previous")
        if isinstance(previous, str) and len(previous) > 8:
            block["previous"] = previous[:-8] + "deadbeef"

    def _with_transfers(self, result: Any) -> None:
        """Accounts' balances as the transfers this node has seen left them."""
        accounts = result.get("accounts") if isinstance(result, dict) else result
        head = self.head()
        for account in accounts if isinstance(accounts, list) else []:
            if isinstance(account, dict) and "balance" in account:
                moved = self.mempool.moved(str(account.get("name")), self.name, head)
                nai = not isinstance(account["balance"], str)
                account["balance"] = self.api.amount(100.0 + moved, "main", nai)

    def _result(self, method: str, params: Any) -> Any:
        b = self.behaviour
        head = self.head()
        name = method.rpartition(".")[2]
        if self.chain == "evm":
            return self._evm(method, params, head)
        if self.chain == "hivemind":
            return self._hivemind(method, params, head)
        if self.chain == "full":  # a whole API node behind jussi: chain and social calls
            social = self._hivemind(method, params, head)
            if social is not MISSING:
                return social
        if name == "get_version" and b.version and b.version != self.api.version:
            return {**self.api.versions(), "blockchain_version": b.version}
        if name == "get_account_history" and isinstance(params, list) and params:
            return self.mempool.history(str(params[0]), self.name, head)
        return self.api.answer(method, params, head, b.fork)

    def _hivemind(self, method: str, params: Any, head: int) -> Any:
        """A hivemind-like backend: the social calls, from a fixed set of posts."""
        name = method.rpartition(".")[2]
        args = params if isinstance(params, dict) else {}
        if method == "hive.db_head_state":
            return {"db_head_block": head, "db_head_age": 1}
        if method in ("bridge.get_post", "condenser_api.get_content"):
            author = args.get("author") or (
                params[0] if isinstance(params, list) and params else "a"
            )
            permlink = args.get("permlink") or (
                params[1] if isinstance(params, list) and len(params) > 1 else "p"
            )
            return self.api.post(
                str(author), str(permlink), head, bridge=method.startswith("bridge")
            )
        if name.startswith(("get_ranked_posts", "get_account_posts", "get_discussions_by_")):
            return [
                self.api.post(f"author{i}", f"post-{head // 100}-{i}", head, bridge=True)
                for i in range(3)
            ]
        if name in ("get_profile", "get_community"):
            return {"name": args.get("account") or args.get("name") or "someone", "id": 1}
        if name in ("get_followers", "get_following"):
            return [{"follower": "f1", "following": "g1", "what": ["blog"]}]
        if name == "get_follow_count":
            return {"account": "a", "follower_count": 10, "following_count": 5}
        return MISSING

    def _evm(self, method: str, params: Any, head: int) -> Any:
        b = self.behaviour
        if method == "eth_blockNumber":
            return hex(head)
        if method == "eth_getBlockByNumber":
            tag = params[0] if isinstance(params, list) and params else "latest"
            block = _block_at(tag, head)
            if block is None or block > head or block < 0:
                return None
            return {
                "number": hex(block),
                "timestamp": hex(int(block_time(block, b.block_interval))),
                "hash": _evm_hash(block),
                "parentHash": _evm_hash(block - 1),
                "transactions": self.mempool.in_block(block),
            }
        if method in ("eth_getTransactionReceipt", "eth_getTransactionByHash"):
            txhash = params[0] if isinstance(params, list) and params else None
            block = self.mempool.transactions.get(str(txhash))
            if block is None or (self.mempool.taken_by[str(txhash)] != self.name and block > head):
                return None
            key = "transactionHash" if method == "eth_getTransactionReceipt" else "hash"
            receipt = {key: txhash, "blockNumber": hex(block), "blockHash": _evm_hash(block)}
            if b.corrupt_rate and self.rng.random() < b.corrupt_rate:
                receipt["blockHash"] = _evm_hash(block)[:-8] + "deadbeef"  # not its block
            return {**receipt, "status": "0x1"} if key == "transactionHash" else receipt
        at = _STATE_AT.get(method)
        if at is not None:  # state that grows with the chain: the block it was read at shows
            tag = params[at] if isinstance(params, list) and len(params) > at else "latest"
            block = _block_at(tag, head)
            if block is None:
                return None
            if block > head or block < 0:
                return NO_HEADER
            return hex(block * STATE_PER_BLOCK)
        if method == "web3_clientVersion":
            return f"Geth/v{b.version or '1.14.0'}"
        if method == "eth_chainId":
            return "0x1"
        return MISSING


_STATE_AT = {"eth_getBalance": 1, "eth_getTransactionCount": 1, "eth_call": 1}
"""EVM reads of state at a block (the position of their block parameter): the simulator
answers ``block x STATE_PER_BLOCK``, so the block a read was answered at shows in it."""
STATE_PER_BLOCK = 1_000


def _block_at(tag: Any, head: int) -> int | None:
    """An EVM block parameter as a number at ``head`` (the simulator's safe block is 32
    behind it, its finalized 64), or None when it is neither a tag nor a number."""
    if isinstance(tag, str) and not tag.startswith("0x"):
        return {"latest": head, "pending": head, "safe": head - 32, "finalized": head - 64}.get(tag)
    try:
        return int(tag, 16) if isinstance(tag, str) else int(tag)
    except (TypeError, ValueError):
        return None


def _evm_hash(block: int) -> str:
    """A simulated EVM block's hash (its number, spelled as a hash)."""
    return "0x" + f"{block:064x}"


def _method(member: Any) -> str:
    if not isinstance(member, dict):
        return "<invalid>"
    method = member.get("method")
    if not isinstance(method, str):
        return "<invalid>"
    params = member.get("params")
    if method == "call" and isinstance(params, list) and len(params) >= 2:
        return f"{params[0]}.{params[1]}"
    return method


def _unavailable() -> web.Response:
    return web.Response(
        status=503,
        content_type="text/html",
        text="<html><body><h1>503 Service Unavailable</h1></body></html>",
    )


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


@contextlib.asynccontextmanager
async def running(*nodes: FakeNode) -> Any:
    """Start nodes for the duration of a block; always stop them."""
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
