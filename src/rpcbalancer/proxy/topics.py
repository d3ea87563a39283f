"""One subscription topic: what its clients have been sent, and what comes next, in order.

A topic (``newHeads``, ``logs`` with one filter, ``newPendingTransactions``) delivers
through one queue, so that what each of its clients sees is one chain: a head is delivered
once (a number and hash already delivered is dropped: the overlap of a switch); a head more
than one block after the last one delivered is preceded by the missing ones, fetched by
number from the node carrying the topic (``eth_getBlockByNumber``, made a header); a head
at or below the last one with another hash is a reorganisation, delivered as the node
delivers it. A ``logs`` topic that moves asks its new node for the logs from a little
before the old node's last head to the new node's head (``eth_getLogs`` with the topic's
filter) and delivers those not delivered yet (known by block hash, log index and
``removed``). Pending transactions cannot be fetched by number: one missed while no node
carries the topic is missed (duplicates are dropped).

Where topics live and move is :mod:`.subscriptions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..errors import UpstreamError
from ..upstream.websocket import NodeSocket
from .routes import canonical

if TYPE_CHECKING:
    from ..fleet.nodes import Node

log = logging.getLogger(__name__)

RECENT = 4096
"""Logs and transactions remembered per topic, to drop their duplicates."""
HEADER_ONLY = ("transactions", "uncles", "size", "totalDifficulty", "withdrawals")
"""What a block has that a ``newHeads`` header does not."""


class Sink(Protocol):
    """Where a client subscription's notifications go (its WebSocket session)."""

    def notify(self, subscription: str, result: bytes) -> None: ...


class Hub(Protocol):
    """What a topic asks of the subscriptions that hold it."""

    timeout: float
    max_gap: int

    def count(self, what: str, n: int = 1) -> None: ...
    def move(self, topic: Topic, reason: str) -> None: ...


class Recent:
    """A bounded set: the latest ``size`` keys added."""

    def __init__(self, size: int) -> None:
        self.keys: set[Any] = set()
        self.order: deque[Any] = deque()
        self.size = size

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def add(self, key: Any) -> None:
        self.keys.add(key)
        self.order.append(key)
        if len(self.order) > self.size:
            self.keys.discard(self.order.popleft())


class Carrier:
    """The balancer's WebSocket to one node and the topics it carries."""

    def __init__(self, node: Node, socket: NodeSocket, clock: Callable[[], float]) -> None:
        self.node = node
        self.socket = socket
        self.pulse: str | None = None
        self.head: int | None = None
        self.heard = clock()
        """When the node last sent a head (or the carrier opened)."""
        self.heads: Topic | None = None
        """The ``newHeads`` topic, served by the pulse."""
        self.topics: dict[str, Topic] = {}
        """Other topics by the node's subscription id."""

    def __repr__(self) -> str:
        return f"<Carrier {self.node.name} head={self.head} topics={len(self.carried)}>"

    @property
    def carried(self) -> list[Topic]:
        return [*([self.heads] if self.heads is not None else []), *self.topics.values()]


class Topic:
    """One subscription upstream, shared by every client that asked for it."""

    def __init__(self, hub: Hub, group: str, kind: str, params: list[Any]) -> None:
        self.hub = hub
        self.group = group
        self.kind = kind
        self.params = params
        self.key = f"{group}|{canonical(params)}"
        self.clients: dict[str, Sink] = {}
        self.carrier: Carrier | None = None
        self.upstream: str | None = None
        self.last: int | None = None
        """``newHeads``: the number of the last head delivered."""
        self.hashes: OrderedDict[int, str] = OrderedDict()
        """``newHeads``: the hash delivered at each recent number."""
        self.seen = Recent(RECENT)
        """``logs``, ``newPendingTransactions``: what was delivered lately."""
        self.queue: deque[tuple[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None
        self.moving: asyncio.Task[None] | None = None
        self.since: int | None = None
        """``logs``, moving: the block its new node is asked for logs from."""

    def __repr__(self) -> str:
        where = self.carrier.node.name if self.carrier else None
        return f"<Topic {self.key} on {where} clients={len(self.clients)}>"

    def feed(self, kind: str, item: Any) -> None:
        self.queue.append((kind, item))
        self.ready.set()

    # -- delivery, in order -------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                kind, item = self.queue.popleft()
                try:
                    if kind == "item":
                        await self._item(item)
                    else:
                        await self._fill(*item)
                except (UpstreamError, TimeoutError) as exc:
                    why = exc.reason if isinstance(exc, UpstreamError) else "no answer in time"
                    log.info("subscription %s: a fill failed (%s); it moves", self.key, why)
                    self.hub.move(self, f"fill failed: {why}")
                except Exception:
                    log.exception("subscription %s: unexpected error delivering", self.key)

    async def _item(self, item: Any) -> None:
        if self.kind == "newHeads":
            if not isinstance(item, dict) or not isinstance(item.get("number"), str):
                return
            number = int(item["number"], 16)
            if self.last is not None and number > self.last + 1:
                await self._fill_heads(self.last + 1, number - 1)
            self._head(item, number)
        elif self.kind == "logs":
            if isinstance(item, dict):
                self._log(item)
        else:
            key = item.get("hash") if isinstance(item, dict) else item
            if key not in self.seen:
                self.seen.add(key)
                self._deliver(item)

    async def _fill(self, since: int | None, upto: int | None) -> None:
        """After a switch: what the new node has that was not delivered."""
        if upto is None:
            return
        if self.kind == "newHeads" and self.last is not None and upto > self.last:
            await self._fill_heads(self.last + 1, upto)
        elif self.kind == "logs" and since is not None and upto >= since:
            since = max(since, upto - self.hub.max_gap + 1)
            query = dict(self.params[1]) if len(self.params) > 1 else {}
            query.update(fromBlock=hex(since), toBlock=hex(upto))
            logs = await self._ask("eth_getLogs", [query])
            for entry in logs if isinstance(logs, list) else []:
                if isinstance(entry, dict):
                    self._log(entry, filled=True)

    async def _fill_heads(self, first: int, last: int) -> None:
        first = max(first, last - self.hub.max_gap + 1)
        for number in range(first, last + 1):
            block = await self._ask("eth_getBlockByNumber", [hex(number), False])
            if not isinstance(block, dict):
                return  # (the node has not got it: its own head will bring it)
            header = {k: v for k, v in block.items() if k not in HEADER_ONLY}
            self.hub.count("filled_heads")
            self._head(header, number)

    async def _ask(self, method: str, params: list[Any]) -> Any:
        carrier = self.carrier
        if carrier is None:
            raise UpstreamError("-", "no node carries the subscription")
        async with asyncio.timeout(self.hub.timeout):
            return await carrier.socket.call(method, params)

    def _head(self, header: dict[str, Any], number: int) -> None:
        digest = header.get("hash")
        if self.hashes.get(number) == digest:
            return  # delivered already (the overlap of a switch)
        self.hashes[number] = str(digest)
        self.hashes.move_to_end(number)
        while len(self.hashes) > RECENT // 16:
            self.hashes.popitem(last=False)
        self.last = number
        self._deliver(header)

    def _log(self, entry: dict[str, Any], filled: bool = False) -> None:
        key = (entry.get("blockHash"), entry.get("logIndex"), bool(entry.get("removed")))
        if key in self.seen:
            return
        self.seen.add(key)
        if filled:
            self.hub.count("filled_logs")
        self._deliver(entry)

    def _deliver(self, result: Any) -> None:
        payload = orjson.dumps(result)
        self.hub.count("notifications", len(self.clients))
        for ident, sink in list(self.clients.items()):
            sink.notify(ident, payload)
