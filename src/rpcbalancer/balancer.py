"""The balancer: builds every part from a :class:`Config` and owns their lifetime.

Hosts (the standalone server, the ASGI app, later Lambda) open one :class:`Balancer` as an
async context manager and hand requests to its gateway. Opening it runs one probe round
(bounded by the probe timeout) before the first request, so a lagging or dead node gets no
traffic even in the first second; closing it stops the probes and the connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType

from .chains import CHAINS, Chain
from .clientip import parse_networks
from .config import Config
from .dns import DnsExpander, Resolver, system_resolver
from .nodes import Fleet, Health, Node, parse_version
from .periodic import Periodic
from .policies import make_policy
from .probe import Prober
from .router import Router
from .upstream import H1Transport, Transport

log = logging.getLogger(__name__)


class Balancer:
    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.config = config
        self.clock = clock
        self.chain: Chain = CHAINS[config.chain]
        self.fleet = Fleet(
            [Node(i, spec) for i, spec in enumerate(config.nodes)],
            Health(
                max_block_lag=config.max_block_lag,
                max_head_age=config.max_head_age,
                min_version=parse_version(config.min_version),
                breaker_failures=config.circuit_breaker.failures,
                breaker_cooldown=config.circuit_breaker.cooldown,
            ),
        )
        self.policy = make_policy(config.strategy, rng)
        self.transport = transport or H1Transport(config.timeouts.connect)
        self.trusted_proxies = parse_networks(config.trusted_proxies)
        self.router = Router(
            self.fleet,
            self.policy,
            self.transport,
            self.chain,
            per_try=config.timeouts.per_try,
            total=config.timeouts.total,
            retries=config.retries,
            clock=clock,
        )
        self.prober = Prober(
            self.fleet,
            self.chain,
            self.transport,
            timeout=config.probe.timeout,
            concurrency=config.probe.concurrency,
            clock=clock,
        )
        self.dns = (
            DnsExpander(config.nodes, self.fleet, resolver=resolver, refresh=config.dns_refresh)
            if config.resolve_dns
            else None
        )
        self.started_at = time.time()
        self._stack: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"<Balancer {self.config.chain} {self.policy.name} {self.fleet!r}>"

    async def __aenter__(self) -> Balancer:
        stack = contextlib.AsyncExitStack()
        stack.push_async_callback(self.transport.aclose)
        if self.dns is not None:
            await self.dns.refresh()
            await stack.enter_async_context(
                Periodic("dns", self.config.dns_refresh, self.dns.refresh)
            )
        try:
            async with asyncio.timeout(self.config.probe.timeout + 1.0):
                await self.prober.round()
        except TimeoutError:
            log.warning("the first probe round did not finish in time; serving anyway")
        await stack.enter_async_context(
            Periodic("probes", self.config.probe.interval, self.prober.round)
        )
        self._stack = stack
        usable, failopen = self.fleet.candidates(self.clock())
        log.info(
            "balancing %d %s nodes with %s; %d usable now%s",
            len(self.fleet.nodes),
            self.chain.name,
            self.policy.name,
            0 if failopen else len(usable),
            " (failing open)" if failopen else "",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
