"""Active health probes: ask every node the chain preset's questions, in the background.

:func:`probe_node` does one node (its calls run concurrently, each with a timeout) and
returns a :class:`~rpcbalancer.nodes.ProbeResult`; :class:`Prober` runs a round over the
whole fleet with bounded concurrency (the balancer repeats it with ``periodic.Periodic``).
The hot path never waits on a probe, except under the ``race`` strategy, whose pings
(:func:`race`) the router sends for a request when it remembers no recent winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import orjson

from ..errors import UpstreamError
from ..fleet.fleet import Fleet, FleetSet
from ..fleet.nodes import Node, ProbeResult
from ..upstream.pool import NodeRequest, Transport
from .chains import Answer, Chain, ProbeCall

log = logging.getLogger(__name__)

PROBE_HEADERS = {"content-type": "application/json", "accept": "application/json"}


def probe_headers(user_agent: str) -> dict[str, str]:
    """The headers of a probe call: JSON, and the configured ``user_agent`` (a node behind a
    CDN may refuse unknown agents, and must see probes as it sees requests)."""
    return {**PROBE_HEADERS, "user-agent": user_agent}


async def ask(
    transport: Transport,
    node: Node,
    call: ProbeCall,
    timeout: float,
    clock: Callable[[], float],
    headers: Mapping[str, str] = PROBE_HEADERS,
) -> Answer:
    """One probe call; failures come back as an :class:`Answer` with ``error`` set."""
    start = clock()
    try:
        method = "GET" if call.body is None else "POST"
        resp = await transport.send(
            node.address, NodeRequest(method, None, headers, call.body), timeout
        )
    except UpstreamError as exc:
        return Answer(error=exc.reason, latency=clock() - start)
    return Answer(status=resp.status, body=resp.body, latency=clock() - start)


async def race(
    transport: Transport,
    nodes: Sequence[Node],
    call: ProbeCall,
    timeout: float,
    clock: Callable[[], float],
    penalty: float,
    headers: Mapping[str, str] = PROBE_HEADERS,
) -> Node | None:
    """Ping every node at once; the first healthy answer wins, the rest are cancelled.
    Every ping is measured on its node (a failure with at least ``penalty`` seconds)."""

    async def ping(node: Node) -> Node | None:
        answer = await ask(transport, node, call, timeout, clock, headers)
        if answer.error is not None:
            node.record(clock(), answer.latency, False, error=answer.error, penalty=penalty)
            return None
        node.observe_latency(clock(), answer.latency)
        return node if ping_ok(answer) else None

    tasks = [asyncio.create_task(ping(n)) for n in nodes]
    try:
        for next_done in asyncio.as_completed(tasks):
            winner = await next_done
            if winner is not None:
                return winner
        return None
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def ping_ok(answer: Answer) -> bool:
    """A race ping's verdict: a JSON answer that does not say the node is unwell."""
    if answer.error is not None or not 200 <= answer.status < 300:
        return False
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return False
    if isinstance(doc, dict):
        if "error" in doc:
            return False
        if "status" in doc and doc["status"] != "OK":
            return False
    return True


async def probe_node(
    transport: Transport,
    chain: Chain,
    node: Node,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    headers: Mapping[str, str] = PROBE_HEADERS,
) -> ProbeResult:
    calls = chain.probe_calls()
    answers = await asyncio.gather(
        *(ask(transport, node, c, timeout, clock, headers) for c in calls)
    )
    by_name = dict(zip((c.name for c in calls), answers, strict=True))
    reading = chain.read(by_name)
    # The latency that ranks nodes is that of the head call: a real JSON-RPC call.
    head = by_name.get("head") or answers[0]
    head_age = wall() - reading.head_time if reading.head_time is not None else None
    return ProbeResult(
        at=clock(),
        ok=reading.ok,
        latency=head.latency,
        error=reading.error,
        head_block=reading.head_block,
        head_age=head_age,
        irreversible_block=reading.irreversible_block,
        version=reading.version,
        version_doc=reading.version_doc,
        head_hash=reading.head_hash,
        parent_hash=reading.parent_hash,
    )


class Prober:
    """Probes the whole fleet, one round per call of :meth:`round`."""

    def __init__(
        self,
        fleet: Fleet | FleetSet,
        chain: Chain,
        transport: Transport,
        *,
        timeout: float,
        concurrency: int = 16,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = "rpcbalancer",
        presets: Mapping[str, Chain | None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.headers = probe_headers(user_agent)
        self.chain = chain
        self.presets = dict(presets or {})
        """What each group is probed with, when not the chain preset (None: not probed)."""
        self.transport = transport
        self.timeout = timeout
        self.clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        self._usable: dict[int, bool] = {}
        self._out: dict[int, asyncio.Task[None]] = {}
        """The probes still out, by node (``id``): left to finish after a round's ``wait``."""
        self.rounds = 0

    def _forget(self, key: int, _: asyncio.Task[None]) -> None:
        self._out.pop(key, None)

    async def close(self) -> None:
        """Stop the probes still out (the balancer is closing)."""
        for task in list(self._out.values()):
            task.cancel()
        for task in list(self._out.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def round(
        self, deadline: float | None = None, wait: float | None = None
    ) -> list[tuple[Node, ProbeResult]]:
        """Probe every node once and apply each result as it comes. Returns what finished,
        in fleet order; nodes still unanswered after ``deadline`` seconds are left out.

        ``wait``: the round returns after that many seconds at most, and the probes still out
        go on and are applied when they end; the next round does not probe their nodes again
        meanwhile. The periodic rounds pass their interval: a node that swallows its probe
        (a blackhole answers nothing until the probe's timeout) does not hold back the
        others' next probes, nor its own after it heals, past about two intervals."""
        done: dict[int, tuple[Node, ProbeResult]] = {}

        async def one(node: Node) -> None:
            preset = self.preset_of(node)
            assert preset is not None
            try:
                async with self._limit:
                    result = await probe_node(
                        self.transport,
                        preset,
                        node,
                        self.timeout,
                        clock=self.clock,
                        headers=self.headers,
                    )
            except Exception:
                log.exception("probe of %s failed", node.name)
                return
            node.apply_probe(result)
            done[node.index] = (node, result)

        nodes = [
            n for n in self.fleet.nodes if self.preset_of(n) is not None and id(n) not in self._out
        ]
        tasks = []
        for node in nodes:
            task = asyncio.create_task(one(node), name=f"rpcbalancer-probe-{node.name}")
            key = id(node)
            self._out[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
            tasks.append(task)
        limit = deadline if wait is None else wait if deadline is None else min(wait, deadline)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=limit)
            if pending and (wait is None or (deadline is not None and deadline <= wait)):
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
                log.warning(
                    "probe round cut at its %.1fs deadline: %d of %d nodes answered",
                    deadline or 0.0,
                    len(done),
                    len(nodes),
                )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self._ask_forks()
        self.rounds += 1
        self._log_changes()
        return [done[n.index] for n in nodes if n.index in done]

    async def _ask_forks(self) -> None:
        """Ask for the block hashes fork choice lacks to judge every node's head
        (:meth:`~..fleet.forks.ForkChoice.wanted`): few or none in a steady fleet."""
        fleets = self.fleet.fleets.values() if isinstance(self.fleet, FleetSet) else [self.fleet]
        for fleet in fleets:
            asks = fleet.forks.wanted(fleet.nodes)
            if not asks:
                continue

            async def one(node: Node, height: int, fleet: Fleet = fleet) -> None:
                preset = self.preset_of(node)
                call = preset.block_call(height) if preset is not None else None
                if call is None:
                    return
                async with self._limit:
                    answer = await ask(
                        self.transport, node, call, self.timeout, self.clock, self.headers
                    )
                digest = preset.block_hash(answer) if preset is not None else None
                if digest is not None:
                    fleet.forks.record(node, height, digest, fleet.nodes)

            await asyncio.gather(*(one(node, height) for node, height in asks))

    def preset_of(self, node: Node) -> Chain | None:
        """What ``node`` is probed with: its group's probe, else the chain preset's; None for
        a group whose health comes from the answers alone."""
        presets = self.presets
        if presets and node.group in presets:
            return presets[node.group]
        return self.chain

    def _log_changes(self) -> None:
        """Log each node that became excluded (with the reason) or usable again, once."""
        now = self.clock()
        best = self.fleet.best_head()
        for node in self.fleet.nodes:
            excluded = self.fleet.excluded(node, now, best)
            reason = None if excluded is None else excluded.reason
            if excluded is not None and excluded.kind == "lagging":
                node.probes_behind += 1
            was = self._usable.get(node.index)
            self._usable[node.index] = reason is None
            if reason is not None and was is not False:
                log.warning("node %s excluded: %s", node.name, reason)
            elif reason is None and was is False:
                log.info("node %s is usable again", node.name)
