"""The standalone host: the protocol-level HTTP server on uvloop, one process per worker.

``serve(config)`` opens the balancer (its first probe round runs before the port opens, so
the first client already meets a probed fleet), listens, and runs until SIGTERM or SIGINT;
then it stops accepting, gives in-flight requests a moment, and closes. With ``workers > 1``
a supervisor starts that many worker processes, each listening on the same port with
SO_REUSEPORT (the kernel spreads connections), and restarts a worker that dies. ``SIGHUP``
(to the server, or to the supervisor) reloads the configuration in every process
(:mod:`.live`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Coroutine
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..observe.logsetup import configure
from ..proxy.server import H1Server
from .live import Live, update_state

log = logging.getLogger(__name__)

GRACE = 5.0  # seconds in-flight requests get after a stop signal
RETIRE_IDLE = 1.0
"""Seconds a connection must have been idle to be closed at a stop; a busier one is closed
by its next answer (``Connection: close``)."""


async def serve_async(
    config: Config,
    *,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
    loader: Callable[[], Config] | None = None,
    generation: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain for ``GRACE`` seconds.
    ``SIGHUP`` reloads the configuration with ``loader`` (:mod:`.live`); ``generation``: the
    workers' shared state's generation ``config`` was read at."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limits = config.limits
    # Open connections, for the drain at shutdown and the gateway's replacement at a reload.
    # Weak: a closed connection must not stay alive here (clients come and go by the
    # million over a server's life).
    connections: weakref.WeakSet[H1Server] = weakref.WeakSet()
    folder = os.environ.get("RPCBALANCER_METRICS_DIR") if reuse_port else None
    async with Live(config, loader, connections, folder, generation) as live:
        loop.add_signal_handler(signal.SIGHUP, lambda: _hangup(live))

        def factory() -> H1Server:
            protocol = H1Server(live.serve, live.config.limits, loop, live.upgrade, live.guard)
            connections.add(protocol)
            return protocol

        tls = tls_context(config)
        server = await loop.create_server(
            factory,
            config.listen.host,
            config.listen.port,
            reuse_port=reuse_port or config.listen.reuse_port,
            backlog=4096,
            ssl=tls,
            ssl_handshake_timeout=limits.request_timeout if tls else None,
        )
        scheme = "https" if tls else "http"
        addresses = ", ".join(
            f"{scheme}://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets
        )
        log.info("serving on %s", addresses)
        # What start-up built lives as long as the process: out of the collector's sight,
        # so that collections under load only walk what requests make.
        gc.freeze()
        await stop.wait()
        log.info("stopping: no new connections; %.0fs for requests in flight", GRACE)
        server.close()
        # Each connection closes when it is answered or idle (a client never writes into
        # a socket closing under it), within the grace.
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:
            open_ = [c for c in connections if not c.closed]
            if not open_:
                break
            for conn in open_:
                conn.retire(RETIRE_IDLE)
            await asyncio.sleep(0.05)
        for conn in list(connections):
            conn.close()


def _hangup(live: Live) -> None:
    """``SIGHUP``: reload (every worker, when there are several), logging how it went."""

    async def reload() -> None:
        try:
            done = await live.reload()
        except ConfigError as exc:
            log.error("reload refused, the configuration serving stays: %s", exc)
        else:
            log.info("reload: %s", done)

    task = asyncio.get_running_loop().create_task(reload())
    _hangups.add(task)
    task.add_done_callback(_hangups.discard)


_hangups: set[asyncio.Task[None]] = set()


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context when ``listen.tls_cert``/``tls_key`` are set; a missing or
    unreadable file is a configuration error at start, not a failed handshake later."""
    listen = config.listen
    if listen.tls_cert is None or listen.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(listen.tls_cert, listen.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"listen.tls_cert/tls_key: cannot load the certificate: {exc}") from None
    return context


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, only slower
        asyncio.run(main)
        return
    uvloop.run(main)


def _worker(config: Config, index: int, loader: Callable[[], Config] | None = None) -> None:
    configure(config.log_level, config.log_format, worker=f"worker{index}")
    folder = os.environ.get("RPCBALANCER_METRICS_DIR")
    generation = int(Live.state_of(folder).get("generation", 0)) if folder else 0
    if loader is not None and generation:
        try:  # a worker (re)started after a reload serves what the others serve
            config = loader()
        except ConfigError as exc:
            log.error("the configuration reloaded is refused here too: %s", exc)
    # The generation its configuration was read at: a reload that comes while it starts is
    # applied once it serves (read later, it would be taken as already applied).
    run_loop(serve_async(config, reuse_port=True, loader=loader, generation=generation))


def serve(config: Config, workers: int = 1, loader: Callable[[], Config] | None = None) -> None:
    """Serve ``config`` (``loader`` reads it again at a reload: :mod:`.live`)."""
    if workers <= 1:
        run_loop(serve_async(config, loader=loader))
        return
    _supervise(config, workers, loader)


def _supervise(config: Config, workers: int, loader: Callable[[], Config] | None) -> None:
    # Workers share their metrics, and the operator's wanted state, through files in a
    # folder of their own (see .metrics, .live); spawned processes inherit the environment,
    # so the variable reaches every worker.
    with tempfile.TemporaryDirectory(prefix="rpcbalancer-metrics-") as folder:
        os.environ["RPCBALANCER_METRICS_DIR"] = folder
        _watch(config, workers, loader, folder)


def _watch(config: Config, workers: int, loader: Callable[[], Config] | None, folder: str) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_worker, args=(config, index, loader), name=f"worker{index}"
        )
        process.start()
        return process

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, frame: object) -> None:
        # Every worker reloads (each refuses a configuration that does not validate).
        update_state(Path(folder), lambda s: {**s, "generation": int(s.get("generation", 0)) + 1})
        log.info("SIGHUP: every worker reloads its configuration")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    procs = {i: start(i) for i in range(workers)}
    log.info("started %d workers", workers)
    while not stopping:
        time.sleep(0.2)
        for index, process in list(procs.items()):
            if not process.is_alive() and not stopping:
                log.warning("worker%d exited with %s; restarting it", index, process.exitcode)
                time.sleep(0.5)
                procs[index] = start(index)
    for process in procs.values():
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    for process in procs.values():
        process.join(GRACE + 5)
