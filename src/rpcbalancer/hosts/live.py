"""A running server, operated live: its configuration reloaded and its nodes drained without
a failed request.

**Reload** (``SIGHUP``, ``POST /admin/reload``, ``rpcbalancer reload``) reads the configuration
again as ``serve`` read it. One that does not validate is refused with the message ``serve``
would give, and the old one keeps serving. One that does becomes a new :class:`Balancer`
made from the old one (``predecessor``): each node that stays keeps what it learned
(latency, health, ejections, drained), and the counters, connections, answer cache, head
floors and rate limits carry over where the new configuration keeps them. When it is ready
(its new nodes probed), every connection's next request goes to its gateway; the requests
in flight finish on the old one, which is closed once the longest of them could have ended
(``timeouts.total``). A change the running server cannot take (``listen``: its address and
TLS) refuses the reload with the reason: a restart, or an upgrade, applies it.

**Drain** (``POST /admin/nodes/{name}/drain``, ``undrain``): the node gets no new requests and
finishes those it has; ``/status``, the metrics and ``top`` show it drained.

With ``serve --workers N`` the workers share a folder with the supervisor: an operator's
request to any worker (or ``SIGHUP`` to the supervisor) writes the wanted state there (a
generation and the drained nodes), and every worker applies it within :data:`WATCH` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..balancer import Balancer
from ..config import Config
from ..errors import ConfigError
from ..periodic import Periodic
from ..proxy.control import drain as drain_nodes
from ..proxy.gateway import Gateway
from ..proxy.overload import Guard
from ..proxy.server import H1Server
from ..proxy.websocket import Session, open_session

log = logging.getLogger(__name__)

WATCH = 0.25
"""Seconds between looks at the workers' shared state."""
STATE = "operator.json"


class Live:
    """The balancer and gateway serving now, and how they are replaced."""

    def __init__(
        self,
        config: Config,
        loader: Callable[[], Config] | None,
        connections: weakref.WeakSet[H1Server],
        folder: str | None = None,
        generation: int | None = None,
    ) -> None:
        """``loader``: reads the configuration again (None: this server cannot reload);
        ``folder``: the state shared with the other workers of a supervisor, if any;
        ``generation``: the shared state's generation ``config`` was read at (None: the one
        there when it starts serving)."""
        self.config = config
        self.loader = loader
        self.connections = connections
        self.folder = Path(folder) if folder else None
        self.balancer: Balancer | None = None
        self.gateway: Gateway | None = None
        self.guard: Guard | None = None
        """This worker's admission by load, kept across reloads (:mod:`..proxy.overload`)."""
        self.generation = 0
        self._read_at = generation
        self.reloads = 0
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._seen = 0.0

    def __repr__(self) -> str:
        return f"<Live {self.balancer!r} generation={self.generation} reloads={self.reloads}>"

    async def __aenter__(self) -> Live:
        self.balancer = await Balancer(self.config).__aenter__()
        self.gateway = Gateway(self.balancer)
        self.gateway.control.operator = self
        self.guard = Guard(self.config.overload, self.balancer.stats.overload)
        self.guard.start(asyncio.get_running_loop())
        if self.folder is not None:
            state = self._read()
            known = int(state.get("generation", 0))
            # A reload that came while this worker started (after its configuration was read)
            # is applied by the first watch: it is not taken as done.
            self.generation = known if self._read_at is None else min(known, self._read_at)
            self._apply_drained(state)
            await self._stack.enter_async_context(Periodic("operator", WATCH, self._watch))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.guard is not None:
            self.guard.stop()
        await self._stack.aclose()
        for task in list(self._retiring):
            task.cancel()
        if self.balancer is not None:
            await self.balancer.__aexit__(None, None, None)

    def serve(self, req: Any, reply: Any) -> Any:
        """The data plane's door for a new connection (it is pointed at each new gateway)."""
        assert self.gateway is not None
        return self.gateway.serve(req, reply)

    def upgrade(self, req: Any, transport: Any, on_close: Any) -> Any:
        """A WebSocket upgrade, taken by the gateway serving now."""
        assert self.gateway is not None
        return open_session(self.gateway, req, transport, on_close)

    # -- the operator's requests -------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Read the configuration again and apply it (here, or in every worker)."""
        config = self._load()  # (raises ConfigError: nothing changes)
        if self.folder is not None:
            state = self._update(lambda s: {**s, "generation": int(s.get("generation", 0)) + 1})
            return {"reloaded": True, "generation": state["generation"], "workers": "all"}
        return await self.apply(config)

    def drain(self, name: str, drained: bool) -> dict[str, Any]:
        assert self.balancer is not None
        done = drain_nodes(self.balancer, name, drained)  # (raises KeyError: unknown)
        if self.folder is not None:

            def change(state: dict[str, Any]) -> dict[str, Any]:
                names = set(state.get("drained", []))
                names = names | {name} if drained else names - {name}
                return {**state, "drained": sorted(names)}

            self._update(change)
        log.warning("node %s %s by the operator", name, "drained" if drained else "undrained")
        return done

    # -- applying a configuration ------------------------------------------------------

    def _load(self) -> Config:
        if self.loader is None:
            raise ConfigError("this server was not started from a configuration it can read again")
        config = self.loader()
        before = self.config
        for what, old, new in (
            ("listen.host", before.listen.host, config.listen.host),
            ("listen.port", before.listen.port, config.listen.port),
            ("listen.tls_cert", before.listen.tls_cert, config.listen.tls_cert),
            ("listen.tls_key", before.listen.tls_key, config.listen.tls_key),
            ("listen.reuse_port", before.listen.reuse_port, config.listen.reuse_port),
            ("log_format", before.log_format, config.log_format),
        ):
            if old != new:
                raise ConfigError(
                    f"{what} changed ({old} -> {new}): a running server cannot take that "
                    "change; restart it, or upgrade (docs/operations.md), to apply it"
                )
        return config

    async def apply(self, config: Config) -> dict[str, Any]:
        """Make ``config`` the one serving: a successor balancer, ready before it serves."""
        async with self._lock:
            old = self.balancer
            assert old is not None
            try:
                successor = await Balancer(config, predecessor=old).__aenter__()
            except ConfigError:
                raise
            except Exception as exc:  # (a store that cannot be opened, say)
                raise ConfigError(f"the new configuration cannot start: {exc}") from exc
            gateway = Gateway(successor)
            gateway.control.operator = self
            self.balancer, self.gateway, self.config = successor, gateway, config
            if self.guard is not None:
                self.guard.configure(config.overload, successor.stats.overload)
            logging.getLogger().setLevel(config.log_level.upper())
            for conn in list(self.connections):  # each one's next request goes there
                conn.handler = self.serve
                if isinstance(conn.upgraded, Session):
                    conn.upgraded.gateway = gateway
            before = {node.key for node in old.fleet.nodes}
            after = {node.key for node in successor.fleet.nodes}
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            self.reloads += 1
            done = {
                "reloaded": True,
                "nodes": len(after),
                "added": sorted(after - before),
                "removed": sorted(before - after),
            }
            log.warning(
                "configuration reloaded: %d nodes (%d added, %d removed)",
                len(after),
                len(after - before),
                len(before - after),
            )
            return done

    async def _retire(self, old: Balancer) -> None:
        """Close the balancer replaced once its requests in flight could have ended."""
        await asyncio.sleep(old.config.timeouts.total + 1.0)
        await old.__aexit__(None, None, None)

    # -- the workers' shared state -------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        assert self.folder is not None
        return self.state_of(self.folder)

    @staticmethod
    def state_of(folder: str | Path) -> dict[str, Any]:
        """The workers' shared state (empty before the operator's first request)."""
        try:
            doc = json.loads((Path(folder) / STATE).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Change the shared state under the folder's lock (workers and supervisor)."""
        assert self.folder is not None
        return update_state(self.folder, change)

    async def _watch(self) -> None:
        assert self.folder is not None
        try:
            seen = (self.folder / STATE).stat().st_mtime_ns
        except OSError:
            return
        if seen == self._seen:
            return
        self._seen = seen
        state = self._read()
        generation = int(state.get("generation", 0))
        if generation > self.generation:
            self.generation = generation
            try:
                config = self._load()
            except ConfigError as exc:
                log.error("reload refused, the configuration serving stays: %s", exc)
            else:
                await self.apply(config)
        self._apply_drained(state)

    def _apply_drained(self, state: dict[str, Any]) -> None:
        assert self.balancer is not None
        names = set(state.get("drained", []))
        for node in self.balancer.fleet.nodes:
            wanted = node.name in names or node.url in names
            if node.drained != wanted:
                node.drain(wanted)


def update_state(
    folder: Path, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Read, change and write the workers' shared state at once (a lock file keeps two
    writers apart; the rename makes a reader see the old state or the new, whole)."""
    path = folder / STATE
    with open(folder / (STATE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        state = change(doc if isinstance(doc, dict) else {})
        temporary = folder / (STATE + f".{os.getpid()}")
        temporary.write_text(json.dumps(state))
        temporary.replace(path)
    return state
