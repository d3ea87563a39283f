"""EVM subscriptions shared per topic, carried by one node at a time, moved when it fails.

Theory of operation
-------------------
A *topic* is what clients subscribe to: ``newHeads``, ``logs`` with one filter, or
``newPendingTransactions`` (its params, as canonical JSON, are its key). However many
clients ask for a topic, the balancer holds one subscription for it upstream, on one node;
each client gets a subscription id of its own and the same notifications.

A *carrier* is the balancer's WebSocket to one node (:class:`.NodeSocket`): every topic
placed on that node shares it, and it always subscribes to the node's ``newHeads`` (the
*pulse*), which tells how far the node is and serves the ``newHeads`` topic itself.

A topic leaves its node when the socket ends, when the fleet excludes the node (down,
ejected, drained, removed by a reload), when the node falls ``switch_lag`` blocks behind
the best head known (its pulse against the probes' heads and the other carriers'), or when
it has been silent for ``silent_after`` seconds while another node showed a newer head.
It goes to the usable node with the highest head (the lowest latency among equals).

What a topic delivers, and in what order, is :mod:`.topics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import WebSocketConfig
from ..errors import UpstreamError
from ..periodic import Periodic
from ..upstream.websocket import NodeSocket
from .routes import canonical
from .topics import Carrier, Sink, Topic

if TYPE_CHECKING:
    from ..fleet.nodes import Node
    from .group import Group

log = logging.getLogger(__name__)

KINDS = ("newHeads", "logs", "newPendingTransactions")
WATCH = 0.25
"""Seconds between looks at the carriers (a dead node is usually seen at once: its socket
ends; a silent or lagging one at the next look)."""
RETRY = 1.0
"""Seconds before a topic that found no node tries again."""
BACKOFF = 5.0
"""Seconds a node whose WebSocket failed is not tried for subscriptions."""
OVERLAP = 2
"""Blocks before the old node's last head that a moved ``logs`` topic asks for again."""


class SubscriptionError(Exception):
    """A subscription refused (the message is the client's)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Subscriptions:
    """Every topic of this process and the carriers they are on."""

    def __init__(
        self,
        config: WebSocketConfig,
        groups: dict[str, Group],
        counts: dict[str, int],
        *,
        timeout: float,
        block_interval: float,
        user_agent: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.groups = groups
        self.counts = counts
        self.timeout = timeout
        self.block_interval = block_interval
        self.silent_after = config.silent_after or 3 * block_interval
        self.switch_lag = config.switch_lag
        self.max_gap = config.max_gap
        self.user_agent = user_agent
        self.clock = clock
        self.topics: dict[str, Topic] = {}
        self.by_client: dict[str, Topic] = {}
        self.carriers: dict[tuple[str, str], Carrier] = {}
        """By (group, node key)."""
        self.failed: dict[tuple[str, str], float] = {}
        """Nodes whose WebSocket failed, until when they are not tried."""
        self._opening: dict[tuple[str, str], asyncio.Future[Carrier]] = {}
        self._watch: Periodic | None = None

    def __repr__(self) -> str:
        return f"<Subscriptions {len(self.topics)} topics on {len(self.carriers)} nodes>"

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    # -- lifetime -----------------------------------------------------------------------

    def start(self) -> None:
        """Start looking at the carriers (in the running loop)."""
        self._watch = Periodic("subscriptions", WATCH, self._look)
        self._watch.start()

    async def aclose(self) -> None:
        if self._watch is not None:
            await self._watch.__aexit__(None, None, None)
        for topic in list(self.topics.values()):
            for task in (topic.worker, topic.moving):
                if task is not None:
                    task.cancel()
        for carrier in list(self.carriers.values()):
            carrier.socket.close()
        self.carriers.clear()
        self.topics.clear()
        self.by_client.clear()
        self.counts["subscriptions"] = 0

    def reconfigure(
        self, config: WebSocketConfig, groups: dict[str, Group], counts: dict[str, int]
    ) -> None:
        """A reload: the new settings and groups serve; a topic whose node (or group) left
        goes elsewhere."""
        self.config = config
        self.silent_after = config.silent_after or 3 * self.block_interval
        self.switch_lag = config.switch_lag
        self.max_gap = config.max_gap
        counts.update({k: v for k, v in self.counts.items() if k not in counts})
        self.counts = counts
        self.groups = groups
        for (group, key), carrier in list(self.carriers.items()):
            found = groups.get(group)
            node = next((n for n in found.fleet.nodes if n.key == key), None) if found else None
            if node is None:
                self._leave(carrier, "removed from the configuration")
            else:
                carrier.node = node

    # -- the clients' side --------------------------------------------------------------

    async def subscribe(self, group: str, params: Any, sink: Sink) -> str:
        """A client's ``eth_subscribe``: its subscription id (raises SubscriptionError)."""
        if not isinstance(params, list) or not params or params[0] not in KINDS:
            kinds = ", ".join(KINDS)
            raise SubscriptionError(-32602, f"eth_subscribe: subscribe to one of {kinds}")
        if group not in self.groups:
            raise SubscriptionError(-32603, f"eth_subscribe: no group {group!r}")
        kind = params[0]
        if kind == "logs" and (len(params) > 2 or not isinstance(([*params, {}])[1], dict)):
            raise SubscriptionError(-32602, "eth_subscribe logs: give one filter object")
        probe = Topic(self, group, kind, params)
        topic = self.topics.get(probe.key)
        if topic is None:
            topic = self.topics[probe.key] = probe
            topic.worker = asyncio.get_running_loop().create_task(topic.run())
            try:
                await self._place(topic, None)
            except SubscriptionError:
                self._forget(topic)
                raise
        ident = "0x" + secrets.token_hex(16)
        topic.clients[ident] = sink
        self.by_client[ident] = topic
        self.count("subscriptions")
        self.count("subscribed")
        return ident

    def unsubscribe(self, ident: str, sink: Sink) -> bool:
        topic = self.by_client.get(ident)
        if topic is None or topic.clients.get(ident) is not sink:
            return False
        del topic.clients[ident]
        del self.by_client[ident]
        self.count("subscriptions", -1)
        if not topic.clients:
            self._forget(topic)
        return True

    def drop(self, sink: Sink) -> None:
        """The client's connection ended: every subscription of it."""
        for ident in [i for i, topic in self.by_client.items() if topic.clients.get(i) is sink]:
            self.unsubscribe(ident, sink)

    def _forget(self, topic: Topic) -> None:
        self.topics.pop(topic.key, None)
        for task in (topic.worker, topic.moving):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._detach(topic)

    # -- placing topics on nodes --------------------------------------------------------

    async def _place(self, topic: Topic, leaving: Carrier | None) -> None:
        """Put a topic on the best node (not the one it leaves); raise SubscriptionError
        when no node takes it."""
        reasons = []
        if leaving is not None and leaving.head is not None:
            since = max(0, leaving.head - OVERLAP)
            topic.since = since if topic.since is None else min(topic.since, since)
        for node in self._ranked(topic.group, leaving):
            try:
                carrier = await self._carrier(topic.group, node)
                if topic.kind == "newHeads":
                    carrier.heads = topic
                    upstream = carrier.pulse
                else:
                    upstream = str(await self._call(carrier, "eth_subscribe", topic.params))
                    carrier.topics[upstream] = topic
            except UpstreamError as exc:
                reasons.append(str(exc))
                self.failed[topic.group, node.key] = self.clock() + BACKOFF
                continue
            topic.carrier, topic.upstream = carrier, upstream
            if topic.last is not None or topic.since is not None:
                topic.feed("fill", (topic.since, carrier.head))
                topic.since = None
            return
        why = "; ".join(reasons) or "no usable node"
        raise SubscriptionError(-32603, f"eth_subscribe: no node takes subscriptions ({why})")

    def _ranked(self, group: str, leaving: Carrier | None) -> list[Node]:
        found = self.groups.get(group)
        if found is None:
            return []
        now = self.clock()
        nodes, _ = found.fleet.candidates(now)
        usable = [
            n
            for n in nodes
            if self.failed.get((group, n.key), 0.0) <= now
            and (leaving is None or n is not leaving.node)
        ]

        def order(node: Node) -> tuple[int, float]:
            carrier = self.carriers.get((group, node.key))
            live = carrier.head if carrier is not None else None
            head = max(live or -1, node.head() or -1)
            return (-head, node.latency(now) or 0.0)

        return sorted(usable, key=order)

    async def _carrier(self, group: str, node: Node) -> Carrier:
        key = (group, node.key)
        carrier = self.carriers.get(key)
        if carrier is not None and carrier.socket.reason is None:
            return carrier
        opening = self._opening.get(key)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[Carrier] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            carrier = await self._open(group, node)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._opening.pop(key, None)
        future.set_result(carrier)
        return carrier

    async def _open(self, group: str, node: Node) -> Carrier:
        holder: list[Carrier] = []

        def notice(sub: str, result: Any) -> None:
            if holder:
                self._notice(holder[0], sub, result)

        def lost(reason: str) -> None:
            if holder:
                self._lost(holder[0], reason)

        headers = {"User-Agent": self.user_agent, **node.spec.headers}
        socket = await NodeSocket.open(
            node.name,
            node.spec.subscribe_url,
            headers=headers,
            timeout=self.timeout,
            on_notice=notice,
            on_lost=lost,
            verify_tls=node.spec.verify_tls,
        )
        carrier = Carrier(node, socket, self.clock)
        holder.append(carrier)
        try:
            carrier.pulse = str(await self._call(carrier, "eth_subscribe", ["newHeads"]))
            head = await self._call(carrier, "eth_blockNumber", [])
            if isinstance(head, str) and carrier.head is None:
                carrier.head = int(head, 16)
        except (UpstreamError, ValueError):
            socket.close()
            raise
        self.carriers[group, node.key] = carrier
        self.count("upstream_sockets")
        log.info("subscriptions: WebSocket open to %s", node.name)
        return carrier

    async def _call(self, carrier: Carrier, method: str, params: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await carrier.socket.call(method, params)
        except TimeoutError:
            raise UpstreamError(carrier.node.name, f"{method}: no answer in time") from None

    def _detach(self, topic: Topic) -> None:
        carrier, topic.carrier = topic.carrier, None
        upstream, topic.upstream = topic.upstream, None
        if carrier is None:
            return
        if carrier.heads is topic:
            carrier.heads = None
        elif (
            upstream is not None
            and carrier.topics.pop(upstream, None) is topic
            and carrier.socket.reason is None
        ):
            unsubscribed = carrier.socket.call("eth_unsubscribe", [upstream])
            unsubscribed.add_done_callback(_quiet)
        if not carrier.carried:
            self._close(carrier)

    def _close(self, carrier: Carrier) -> None:
        for key, known in list(self.carriers.items()):
            if known is carrier:
                del self.carriers[key]
        carrier.socket.close()

    # -- what the nodes say ---------------------------------------------------------------

    def _notice(self, carrier: Carrier, sub: str, result: Any) -> None:
        if sub == carrier.pulse:
            number = result.get("number") if isinstance(result, dict) else None
            if isinstance(number, str):
                with contextlib.suppress(ValueError):
                    head = int(number, 16)
                    carrier.head = head if carrier.head is None else max(carrier.head, head)
                    carrier.heard = self.clock()
            if carrier.heads is not None:
                carrier.heads.feed("item", result)
            return
        topic = carrier.topics.get(sub)
        if topic is not None and topic.carrier is carrier:
            topic.feed("item", result)

    def _lost(self, carrier: Carrier, reason: str) -> None:
        if any(known is carrier for known in self.carriers.values()):
            self._leave(carrier, f"WebSocket ended: {reason}")

    def _leave(self, carrier: Carrier, reason: str) -> None:
        topics = carrier.carried
        if topics:
            log.warning(
                "subscriptions: leaving %s (%s): %d topics move",
                carrier.node.name,
                reason,
                len(topics),
            )
        for topic in topics:
            self.move(topic, reason)
        self._close(carrier)

    def move(self, topic: Topic, reason: str) -> None:
        """Take the topic off its node and put it on another (in the background)."""
        if topic.moving is not None and not topic.moving.done():
            return
        leaving = topic.carrier
        self._detach(topic)
        self.count("switches")
        topic.moving = asyncio.get_running_loop().create_task(self._move(topic, leaving))

    async def _move(self, topic: Topic, leaving: Carrier | None) -> None:
        while topic.key in self.topics:
            try:
                await self._place(topic, leaving)
                where = topic.carrier.node.name if topic.carrier else "?"
                log.info("subscription %s now on %s", topic.key, where)
                return
            except SubscriptionError as exc:
                log.warning("subscription %s: %s; trying again", topic.key, exc)
                leaving = None  # (the old node may be the only one: try it too)
                await asyncio.sleep(RETRY)

    async def _look(self) -> None:
        """Leave a node that is excluded, behind or silent."""
        now = self.clock()
        for (group, _), carrier in list(self.carriers.items()):
            if carrier.socket.reason is not None:
                self._leave(carrier, f"WebSocket ended: {carrier.socket.reason}")
                continue
            found = self.groups.get(group)
            if found is None:
                continue
            excluded = found.fleet.excluded(carrier.node, now)
            if excluded is not None:
                self._leave(carrier, f"excluded: {excluded}")
                continue
            best = max(
                [found.fleet.best_head() or -1]
                + [c.head or -1 for (g, _), c in self.carriers.items() if g == group]
            )
            head = carrier.head if carrier.head is not None else -1
            if best - head >= self.switch_lag:
                self._leave(carrier, f"{best - head} blocks behind")
            elif best > head and now - carrier.heard > self.silent_after:
                self._leave(carrier, f"silent for {now - carrier.heard:.1f}s")
            else:
                self._keep_alive(carrier, now)

    def _keep_alive(self, carrier: Carrier, now: float) -> None:
        """Ping a quiet node; leave one that does not answer (a blackholed link)."""
        quiet = now - carrier.socket.heard
        config = self.config
        if quiet > config.ping_interval + config.ping_timeout:
            self._leave(carrier, f"no answer to a ping in {config.ping_timeout:.0f}s")
        elif quiet > config.ping_interval and now - carrier.socket.pinged > config.ping_interval:
            carrier.socket.ping(now)

    def view(self) -> list[dict[str, Any]]:
        """The topics and where they are (for ``/status.json``)."""
        return [
            {
                "group": topic.group,
                "topic": canonical(topic.params),
                "node": topic.carrier.node.name if topic.carrier else None,
                "clients": len(topic.clients),
                "last_head": topic.last,
            }
            for topic in self.topics.values()
        ]


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
