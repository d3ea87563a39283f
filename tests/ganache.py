"""A small EVM network of real ganache nodes, for the client tests.

ganache instances do not talk to each other, so this module plays the peer-to-peer network
between them. Each node gets a relay in front of it (the URL the balancer is given): the
relay forwards every call to its ganache and counts what it got; a signed transaction
(``eth_sendRawTransaction``, alone or in a batch) is answered by the node it was sent to and
then gossiped: every connected node puts it in a block of its own, with the same timestamp
(the nodes' own miners are stopped: blocks come from the network only).
Blocks mined by :meth:`EvmNetwork.mine` are made the same way, so connected nodes keep
identical chains (same hashes, same receipts), as followers of one chain do.

A node can be held back (:meth:`EvmNetwork.hold`): it gets no blocks or transactions until
released (:meth:`EvmNetwork.release`), when it replays what it missed and catches up. Holding
every node but one puts that one ahead.

A node can also go onto a fork (:meth:`EvmNetwork.fork`): cut off from the network, it mines
blocks of its own (:meth:`EvmNetwork.mine_fork`), at the network's heights with other hashes,
until it rejoins (:meth:`EvmNetwork.rejoin`) and reorganises: its own blocks are dropped
(``evm_revert`` to where it forked) and it replays the network's.

All ganache processes start together with the same genesis (deterministic wallet, chain id
and network id 1337, one genesis time) and are stopped by their PIDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from aiohttp import ClientSession, web

from rpcbalancer.sim import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "clients" / "js"
GANACHE = JS / "node_modules" / "ganache" / "dist" / "node" / "cli.js"
CHAIN_ID = 1337

ACCOUNTS = {
    # ganache's deterministic wallet: test keys known to everyone, never for a real chain.
    "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1": (
        "0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d"
    ),
    "0xFFcf8FDEE72ac11b5c542428B35EEF5769C409f0": (
        "0x6cbed15c793ce57650b9877cf6fa156fbef513c4e6134f022a85b1ffdd59b2a1"
    ),
    "0x22d491Bde2303f2f43325b2108D26f1eAbA1e32b": (
        "0x6370fd033278c143179d81c5526140625662b8daa446c22ee2d73db3707e620c"
    ),
}


@dataclass
class _Event:
    """One block of the network's chain: its timestamp and the signed transactions in it."""

    timestamp: int
    raw: list[str] = field(default_factory=list)


@dataclass
class EvmNode:
    name: str
    rpc_port: int
    port: int = 0
    """The relay's port: the node's URL as the balancer knows it."""
    proc: subprocess.Popen[bytes] | None = None
    applied: int = 0
    """Events of the network's log this node has (its chain is the log's first ``applied``)."""
    held: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    """JSON-RPC methods the relay got (batch members counted one by one)."""
    sent: list[str] = field(default_factory=list)
    """Signed transactions the relay got from its clients (before any gossip)."""
    die_every: int = 0
    """When set, every ``die_every``-th signed transaction this node takes (and gossips) is
    never answered: the connection drops, as when a node dies right after taking it."""
    died: int = 0
    """Transactions it took and died on."""
    fork_base: int | None = None
    """While on a fork of its own: the events of the log it had when it forked."""
    snapshot: str = ""
    """ganache's snapshot of its chain where it forked (``evm_snapshot``)."""
    fork_time: int = 0
    """The timestamp of its latest block of its own."""
    forked: list[list[str]] = field(default_factory=list)
    """The hashes of the blocks it mined on its own, a list per fork, in order."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"


class EvmNetwork:
    def __init__(self, names: list[str], folder: Path) -> None:
        node = shutil.which("node")
        if node is None or not GANACHE.is_file():
            raise FileNotFoundError("node and tests/clients/js/node_modules (make clients)")
        self.node_binary = node
        self.folder = folder
        self.nodes = {name: EvmNode(name, free_port()) for name in names}
        self.log: list[_Event] = []
        self._genesis = int(time.time()) - 60
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._lock: asyncio.Lock | None = None
        self._session: ClientSession | None = None
        self._logs = contextlib.ExitStack()

    def __getitem__(self, name: str) -> EvmNode:
        return self.nodes[name]

    # -- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> EvmNetwork:
        try:
            genesis = datetime.fromtimestamp(self._genesis, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for node in self.nodes.values():
                log = self._logs.enter_context(
                    (self.folder / f"ganache-{node.name}.log").open("wb")
                )
                node.proc = subprocess.Popen(
                    [self.node_binary, str(GANACHE), "--server.host", "127.0.0.1",
                     "--server.port", str(node.rpc_port), "--wallet.deterministic",
                     "--chain.chainId", str(CHAIN_ID), "--chain.networkId", str(CHAIN_ID),
                     "--chain.time", genesis, "--logging.quiet"],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            for node in self.nodes.values():
                self._wait_ready(node)
                self.call(node.name, "miner_stop")  # blocks come from the network only
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._start_relays(), self._loop).result(20)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop_relays(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        for node in self.nodes.values():
            stop_process(node.proc)
        self._logs.close()
        self._loop.close()

    def _wait_ready(self, node: EvmNode, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"ganache {node.name} exited with {node.proc.returncode}")
            with contextlib.suppress(requests.RequestException):
                if self.call(node.name, "eth_chainId") == hex(CHAIN_ID):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"ganache {node.name} did not answer within {timeout}s")

    async def _start_relays(self) -> None:
        self._lock = asyncio.Lock()
        self._session = ClientSession()
        for node in self.nodes.values():
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._relay_handler(node))
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            node.port = free_port()
            await web.TCPSite(runner, "127.0.0.1", node.port).start()
            self._runners.append(runner)

    async def _stop_relays(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- the test's controls (from the test's thread) -------------------------------------------

    def call(self, name: str, method: str, params: list[Any] | None = None) -> Any:
        """A JSON-RPC call straight to a node's ganache (not through its relay)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
        doc = requests.post(self.nodes[name].rpc_url, json=body, timeout=30).json()
        if "error" in doc:
            raise RuntimeError(f"{name} {method}: {doc['error']}")
        return doc["result"]

    def head(self, name: str) -> int:
        return int(self.call(name, "eth_blockNumber"), 16)

    def mine(self, blocks: int = 1) -> None:
        """Mine empty blocks on every connected node."""
        for _ in range(blocks):
            self._run(self._add(_Event(self._timestamp())))

    def send(self, raw: str, via: str) -> str:
        """Send a signed transaction to one node, as a wallet would; the network gossips it."""
        return str(self._run(self._send_raw(self.nodes[via], raw)))

    def hold(self, *names: str) -> None:
        for name in names:
            self.nodes[name].held = True

    def release(self, *names: str) -> None:
        """Let held nodes catch up: they replay every block they missed (a forked node stays
        on its fork until it rejoins)."""
        for name in names:
            if self.nodes[name].fork_base is None:
                self.nodes[name].held = False
        self._run(self._catch_up())

    def fork(self, name: str) -> None:
        """Cut a node off onto a chain of its own (it gets nothing from the network)."""
        self._run(self._fork(self.nodes[name]))

    def mine_fork(self, name: str) -> None:
        """One block of a forked node's own chain: at the height the network would give it
        next, with another timestamp, so another hash."""
        self._run(self._mine_own(self.nodes[name]))

    def rejoin(self, name: str) -> None:
        """A forked node reorganises onto the network's chain and catches up."""
        self._run(self._rejoin(self.nodes[name]))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def _timestamp(self) -> int:
        last = self.log[-1].timestamp if self.log else self._genesis
        return max(int(time.time()), last + 1)

    # -- the network (on the relays' loop) ------------------------------------------------------

    async def _rpc(self, node: EvmNode, method: str, params: list[Any]) -> Any:
        assert self._session is not None
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self._session.post(node.rpc_url, json=body) as resp:
            return await resp.json(content_type=None)

    async def _apply(self, node: EvmNode, event: _Event) -> None:
        for raw in event.raw:
            await self._rpc(node, "eth_sendRawTransaction", [raw])
        await self._rpc(node, "evm_mine", [event.timestamp])
        node.applied += 1

    async def _add(self, event: _Event) -> None:
        assert self._lock is not None
        async with self._lock:
            self.log.append(event)
            for node in self.nodes.values():
                if not node.held and node.applied == len(self.log) - 1:
                    await self._apply(node, event)

    async def _catch_up(self) -> None:
        assert self._lock is not None
        async with self._lock:
            for node in self.nodes.values():
                while not node.held and node.applied < len(self.log):
                    await self._apply(node, self.log[node.applied])

    async def _fork(self, node: EvmNode) -> None:
        assert self._lock is not None
        async with self._lock:
            while not node.held and node.applied < len(self.log):
                await self._apply(node, self.log[node.applied])
            node.held = True
            node.fork_base = node.applied
            node.snapshot = (await self._rpc(node, "evm_snapshot", []))["result"]
            node.fork_time = self._timestamp() + 100_000  # never a timestamp of the network's
            node.forked.append([])

    async def _mine_own(self, node: EvmNode) -> None:
        assert self._lock is not None and node.fork_base is not None
        async with self._lock:
            node.fork_time += 1
            await self._rpc(node, "evm_mine", [node.fork_time])
            block = await self._rpc(node, "eth_getBlockByNumber", ["latest", False])
            node.forked[-1].append(block["result"]["hash"])

    async def _rejoin(self, node: EvmNode) -> None:
        assert self._lock is not None and node.fork_base is not None
        async with self._lock:
            reverted = await self._rpc(node, "evm_revert", [node.snapshot])
            if reverted.get("result") is not True:
                raise RuntimeError(f"{node.name} could not revert its fork: {reverted}")
            node.applied, node.fork_base, node.held = node.fork_base, None, False
            while node.applied < len(self.log):
                await self._apply(node, self.log[node.applied])

    async def _send_raw(self, node: EvmNode, raw: str) -> Any:
        """The node's own answer to a signed transaction. Accepted, it goes into a new block
        on that node and on every connected one (the same block everywhere)."""
        assert self._lock is not None
        async with self._lock:
            if node.held:  # a test sends through connected nodes only
                return {"error": {"code": -32000, "message": f"{node.name} is held back"}}
            answer = await self._rpc(node, "eth_sendRawTransaction", [raw])
            if isinstance(answer, dict) and "result" in answer:
                event = _Event(self._timestamp(), [raw])
                self.log.append(event)
                await self._rpc(node, "evm_mine", [event.timestamp])
                node.applied += 1
                for other in self.nodes.values():
                    if other is not node and not other.held and other.applied == node.applied - 1:
                        await self._apply(other, event)
        accepted = isinstance(answer, dict) and "result" in answer
        return answer.get("result") if accepted else answer

    def _relay_handler(self, node: EvmNode) -> Any:
        async def handle(request: web.Request) -> web.Response:
            doc = json.loads(await request.read())
            members = doc if isinstance(doc, list) else [doc]
            answers: list[Any] = [None] * len(members)
            forward = []
            for i, member in enumerate(members):
                method = member.get("method") if isinstance(member, dict) else None
                node.counts[str(method)] += 1
                if method == "eth_sendRawTransaction":
                    node.sent.append(member["params"][0])
                    answers[i] = await self._answer_raw(node, member)
                    taken = "result" in answers[i]
                    if taken and node.die_every and len(node.sent) % node.die_every == 0:
                        node.died += 1
                        assert request.transport is not None
                        request.transport.abort()  # it took the transaction, then died
                        await asyncio.sleep(3600)  # (cancelled with the connection)
                else:
                    forward.append(i)
            if forward:
                batch = [members[i] for i in forward]
                async with self._session.post(node.rpc_url, json=batch) as resp:  # type: ignore[union-attr]
                    got = await resp.json(content_type=None)
                for i, answer in zip(forward, got, strict=True):
                    answers[i] = answer
            return web.json_response(answers if isinstance(doc, list) else answers[0])

        return handle

    async def _answer_raw(self, node: EvmNode, member: dict[str, Any]) -> Any:
        result = await self._send_raw(node, member["params"][0])
        ident = member.get("id")
        if isinstance(result, dict):  # the node's error
            return {"jsonrpc": "2.0", "id": ident, "error": result.get("error")}
        return {"jsonrpc": "2.0", "id": ident, "result": result}
