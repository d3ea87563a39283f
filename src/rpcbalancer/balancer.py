"""The balancer: builds every part from a :class:`Config` and owns their lifetime.

Hosts (the standalone server, the ASGI app, Lambda) open one :class:`Balancer` as an async
context manager and hand requests to its gateway. Opening it runs one probe round (bounded by
the probe timeout) before the first request, so a lagging or dead node gets no traffic even in
the first second; closing it stops the probes and the connection pool.

A serverless host (``background=False``) has no time between requests: its process is frozen
until the next invocation. There the balancer starts no background task and probes nothing on
opening; the host calls :meth:`Balancer.maintain` before each request, which does inline
whatever housekeeping is due (store view, outliers, DNS). Until the store brings fresh canary
records, requests are routed by the original design's race.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .cache import AnswerCache
from .config import Config
from .failsafe.budget import RetryBudget
from .fleet.fleet import Fleet, FleetSet, OutlierRule, eject_outliers
from .fleet.nodes import Health, Node, parse_version
from .fleet.policies import BasePolicy, Race, make_policy
from .health.canary import Canary, StoreView
from .health.chains import CHAINS, Chain
from .health.chains.call import CallProbe
from .health.chains.evm import Evm
from .health.probe import Prober
from .health.store import open_store
from .health.store.redis import RedisStore
from .health.versions import Versions
from .observe.accesslog import AccessLog, RequestIds
from .observe.counters import Rates, SnapshotFolder, Stats
from .periodic import Periodic
from .proxy.access import KeyRing, MethodFilter
from .proxy.clientip import parse_networks
from .proxy.group import Group
from .proxy.heads import HeadFloor
from .proxy.plan import Planner
from .proxy.ratelimit import LocalLimiter, RedisLimiter
from .proxy.router import Router
from .proxy.sharedheads import SharedHeads
from .proxy.subscriptions import Subscriptions
from .proxy.writes import RecentWrites
from .upstream.dns import DnsExpander
from .upstream.names import Names, Resolver, system_resolver
from .upstream.pool import H1Transport, Transport

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
        background: bool = True,
        predecessor: Balancer | None = None,
    ) -> None:
        """``predecessor``: the balancer this one replaces (a reload): what its nodes
        learned, its counters, connections, cache, floors and limits carry over where the
        new configuration keeps them (:meth:`_take`)."""
        self.config = config
        self._handed: set[int] = set()
        """What a successor took over (:meth:`_take`): not closed by this one."""
        self._inherited: set[int] = set()
        """What this one took over from its predecessor: opened already."""
        self.background = background
        self.clock = clock
        self.chain: Chain = CHAINS[config.chain]
        health = Health(
            max_block_lag=config.max_block_lag,
            max_head_age=config.max_head_age,
            min_version=parse_version(config.min_version),
            breaker_failures=config.circuit_breaker.failures,
            breaker_cooldown=config.circuit_breaker.cooldown,
            slow_start=config.outlier.slow_start,
        )
        self.rng = rng or random.Random()
        self.outliers = OutlierRule(
            min_requests=config.outlier.min_requests,
            stdev_factor=config.outlier.stdev_factor,
            min_success=config.outlier.min_success,
            base_ejection=config.outlier.base_ejection,
            max_ejection=config.outlier.max_ejection,
            max_ejected=config.outlier.max_ejected,
        )
        before = predecessor.config if predecessor is not None else None
        same = before is not None and before.timeouts.connect == config.timeouts.connect
        self.transport = transport or (
            self._take(predecessor, "transport")
            if same
            else H1Transport(config.timeouts.connect, names=Names(config.dns_refresh, resolver))
        )
        if isinstance(self.transport, H1Transport):
            self.transport.names.ttl = config.dns_refresh  # (a reload keeps what it knows)
        self.trusted_proxies = parse_networks(config.trusted_proxies)
        budget = RetryBudget(config.budget.ratio, config.budget.min_per_second, config.budget.burst)
        methods = self.chain.metric_methods | set(config.metrics.methods)
        same = before is not None and (before.chain, set(before.metrics.methods)) == (
            config.chain,
            set(config.metrics.methods),
        )
        self.stats = self._take(predecessor, "stats") if same else Stats(methods)
        consistency = config.consistency
        same = before is not None and before.consistency == consistency
        self.writes = (
            (self._take(predecessor, "writes") if same else None)
            or RecentWrites(consistency.read_your_writes_for, clock)
            if consistency.read_your_writes
            else None
        )
        """Clients that broadcast lately, whose reads follow it (:mod:`.proxy.writes`)."""
        self.groups: dict[str, Group] = {}
        """Every group of backends by name, ``default`` first (see :mod:`.proxy.routes`)."""
        presets: dict[str, Chain | None] = {}
        index = 0
        urls: set[str] = set()
        for name, spec in config.groups().items():
            nodes = []
            for node in spec.nodes:
                # A URL listed in an earlier group too: the same server in another role.
                made = Node(index, node, group=name, role=name if node.url in urls else None)
                known = predecessor.node(name, made.key) if predecessor is not None else None
                if known is not None:
                    made.inherit(known)
                nodes.append(made)
                urls.add(node.url)
                index += 1
            fleet = Fleet(nodes, health, fork_choice=config.consistency.fork_choice)
            params = spec.strategy or config.strategy
            policy = make_policy(params, self.rng)
            router = Router(
                fleet,
                policy,
                self.transport,
                self.chain,
                per_try=spec.timeout or config.timeouts.per_try,
                total=config.timeouts.total,
                retries=config.retries if spec.retries is None else spec.retries,
                clock=clock,
                budget=budget,
                hedge=config.hedge,
                node_concurrency=config.node_concurrency,
                queue_size=config.queue_size,
                user_agent=config.user_agent,
            )
            # A group of chain nodes holds its head (not hivemind's or HAfAH's: their
            # answers say nothing of one).
            heads = None
            if config.consistency.monotonic_head and isinstance(spec.probe, str):
                known_group = predecessor.groups.get(name) if predecessor is not None else None
                heads = known_group.heads if known_group is not None else None
                if heads is None or heads.chain is not self.chain:
                    heads = HeadFloor(self.chain, config.consistency.hold_for, clock, self.stats)
                heads.hold_for, heads.stats = config.consistency.hold_for, self.stats
            self.groups[name] = Group(name, spec, fleet, policy, router, heads)
            if spec.probe == "passive":
                presets[name] = None
            elif not isinstance(spec.probe, str):
                presets[name] = CallProbe(self.chain, spec.probe.method, spec.probe.params)
        first = next(iter(self.groups.values()))
        self.fleet = FleetSet({name: group.fleet for name, group in self.groups.items()})
        """Every node of every group (probes, the store, views and metrics go over it)."""
        self.policy = first.policy
        self.router = first.router
        """The first group's (``default``): the routes send everything else there."""
        self.race = (
            self.policy
            if isinstance(self.policy, Race)
            else Race(config.strategy.model_copy(update={"name": "race"}), self.rng)
        )
        self.prober = Prober(
            self.fleet,
            self.chain,
            self.transport,
            timeout=config.probe.timeout,
            concurrency=config.probe.concurrency,
            clock=clock,
            user_agent=config.user_agent,
            presets=presets,
        )
        self.versions = Versions(self.prober, config.probe.timeout)
        """Each node's version answer, for the original reply shape (``annotate: body``)."""
        self.store = None if config.store.lower() == "none" else open_store(config.store)
        self.canary = Canary(
            self.fleet,
            self.prober,
            self.store,
            interval=config.probe.interval,
            retention=config.history_retention,
            round_deadline=config.probe.round_deadline,
            clock=clock,
        )
        self.view = (
            StoreView(
                self.fleet, self.store, stale_after=3 * config.probe.interval + 5, clock=clock
            )
            if self.store is not None
            else None
        )
        self.dns = (
            DnsExpander(first.spec.nodes, first.fleet, resolver=resolver)
            if config.resolve_dns
            else None
        )
        self.methods = MethodFilter(config.methods)
        self.keys = KeyRing(config.api_keys, self.methods) if config.api_keys is not None else None
        max_clients = config.rate_limit.max_clients if config.rate_limit else 100_000
        same = before is not None and before.rate_limit == config.rate_limit
        self.limiter = (
            self._take(predecessor, "limiter") if same else LocalLimiter(clock, max_clients)
        )
        self.shared_limiter: RedisLimiter | None = None
        """Rate limits shared through the Redis store (see :mod:`.ratelimit`)."""
        limits = [config.rate_limit]
        if config.api_keys is not None:
            limits += [key.rate_limit for key in config.api_keys.keys]
        shared = any(limit is not None and limit.shared for limit in limits)
        if shared and isinstance(self.store, RedisStore):
            self.shared_limiter = RedisLimiter(
                self.store.connect_url, f"{self.store.prefix}:", self.limiter
            )
        self.request_ids = (
            self._take(predecessor, "request_ids") if predecessor is not None else RequestIds()
        )
        same = before is not None and before.access_log == config.access_log
        self.access_log = (
            (self._take(predecessor, "access_log") if same else None)
            or AccessLog(config.access_log, config.secrets)
            if config.access_log.enabled
            else None
        )
        folder = os.environ.get("RPCBALANCER_METRICS_DIR")
        self.snapshots = (
            (self._take(predecessor, "snapshots") if predecessor is not None else None)
            or SnapshotFolder(folder)
            if folder and background
            else None
        )
        """Where workers of one server share their counters (see :mod:`.metrics`)."""
        self.coalesce = config.cache.coalesce and (config.cache.enabled or len(self.groups) > 1)
        """Whether identical reads in flight share one call (see :mod:`.proxy.coalesce`)."""
        self.planner = Planner(config, self.chain, self.groups, self.stats.methods, self.coalesce)
        """Routes: which group serves a call, with what TTL (see :mod:`.proxy.plan`)."""
        self.answer_cache: AnswerCache | None = None
        """The answer cache (``cache.enabled``), shared by this balancer's gateways."""
        same = before is not None and (before.cache, before.chain) == (config.cache, config.chain)
        if config.cache.enabled:
            interval = self.chain.block_interval
            counts = self.stats.cache
            self.answer_cache = (self._take(predecessor, "answer_cache") if same else None) or (
                AnswerCache(config.cache, config.chain, interval, counts=counts)
            )
            self.answer_cache.counts = counts
            self.answer_cache.on_broken = lambda name, why: self.mark(name, "integrity", why)
        consistency = config.consistency
        self.shared_heads: SharedHeads | None = None
        """The head held across every process sharing the cache's Redis."""
        if consistency.monotonic_head and consistency.share and config.cache.url:
            same = before is not None and before.cache.url == config.cache.url
            self.shared_heads = (self._take(predecessor, "shared_heads") if same else None) or (
                SharedHeads(config.cache.url, config.chain, consistency.hold_for)
            )
        self.subscriptions: Subscriptions | None = None
        """EVM subscriptions shared per topic (:mod:`.proxy.subscriptions`), for WebSocket
        clients of the standalone server (hosts where nothing runs in the background, as
        Lambda, have none); taken over by a reload."""
        if isinstance(self.chain, Evm) and config.websocket.enabled and background:
            hub = self._take(predecessor, "subscriptions")
            if hub is None:
                hub = Subscriptions(
                    config.websocket,
                    self.groups,
                    self.stats.websocket,
                    timeout=config.timeouts.connect + config.timeouts.per_try,
                    block_interval=self.chain.block_interval,
                    user_agent=config.user_agent,
                    clock=clock,
                )
            else:
                hub.reconfigure(config.websocket, self.groups, self.stats.websocket)
            self.subscriptions = hub
        self.rates = Rates() if config.compat == "doctorlai" else None
        """The requests counter sampled once a second (DoctorLai's requests per second)."""
        if self.rates is not None and predecessor is not None and predecessor.rates is not None:
            self.rates = predecessor.rates
        self.started_at: float = predecessor.started_at if predecessor is not None else time.time()
        self._stack: contextlib.AsyncExitStack | None = None
        self._due: dict[str, float] = {}

    def _take(self, predecessor: Balancer | None, name: str) -> Any:
        """The predecessor's ``name`` (None when there is none, or it has none), now this
        balancer's: the predecessor no longer closes it."""
        if predecessor is None:
            return None
        taken = getattr(predecessor, name, None)
        if taken is not None:
            predecessor._handed.add(id(taken))
            self._inherited.add(id(taken))
        return taken

    def node(self, group: str, key: str) -> Node | None:
        """The node of ``group`` with this key (its URL, and role), if any."""
        found = self.groups.get(group)
        if found is None:
            return None
        return next((node for node in found.fleet.nodes if node.key == key), None)

    def mine(self, resource: object) -> bool:
        """Whether this balancer closes ``resource`` (a successor did not take it over)."""
        return id(resource) not in self._handed

    def mark(self, name: str, cause: str, why: str) -> None:
        """A node said what it must not have (a block that does not link to the blocks kept,
        cause ``integrity``; an answer the others disagree with, ``quorum``): it is taken out
        of rotation as an outlier is, for the same time (a forked or corrupted node)."""
        outlier = self.config.outlier
        for node in self.fleet.nodes:
            if node.name == name:
                seconds = node.eject(
                    self.clock(), outlier.base_ejection, outlier.max_ejection, cause
                )
                log.warning("node %s ejected for %.0fs (%s): %s", name, seconds, cause, why)

    @property
    def subscriptions_view(self) -> list[dict[str, Any]]:
        """Each subscription topic, the node carrying it and its clients."""
        return [] if self.subscriptions is None else self.subscriptions.view()

    @property
    def floors_view(self) -> list[dict[str, Any]]:
        """Each group's held head (:mod:`.proxy.heads`): the highest head its answers
        reported or showed, and what EVM's ``latest`` and ``finalized`` were last resolved
        to (None before any)."""
        return [
            {
                "group": name,
                "head": group.heads.head,
                "latest": group.heads.pinned or None,
                "finalized": group.heads.final or None,
                "held": group.heads.held,
                "released": group.heads.released,
            }
            for name, group in self.groups.items()
            if group.heads is not None
        ]

    @property
    def names_view(self) -> dict[str, dict[str, Any]]:
        """Each node host name's addresses as resolved for new connections, and whether its
        last lookup failed (:mod:`.upstream.names`)."""
        transport = self.transport
        return transport.names.view() if isinstance(transport, H1Transport) else {}

    @property
    def routes_view(self) -> list[dict[str, Any]]:
        """Each route: its prefix and what it sets (``preset``: the chain preset's, not
        replaced by a configured one)."""
        views = {}
        configured = self.config.routes
        for rule in self.planner.routes.rules:
            view = {"prefix": rule.prefix, "upstream": rule.group, "ttl": rule.ttl}
            view.update(timeout=rule.timeout, retries=rule.retries)
            view["preset"] = rule.prefix not in configured or None
            views[rule.prefix] = {k: v for k, v in view.items() if v is not None}
        return list(views.values())

    @property
    def routing(self) -> BasePolicy:
        """The strategy routing now: the configured one, or on Lambda the race until the
        canary's records are fresh."""
        return self.router.policy

    def __repr__(self) -> str:
        return f"<Balancer {self.config.chain} {self.policy.name} {self.fleet!r}>"

    async def __aenter__(self) -> Balancer:
        stack = contextlib.AsyncExitStack()
        for resource in (self.transport, self.answer_cache, self.shared_heads, self.subscriptions):
            if resource is not None:
                stack.push_async_callback(self._close, resource)
        if self.subscriptions is not None and id(self.subscriptions) not in self._inherited:
            self.subscriptions.start()
        if self.shared_limiter is not None:
            stack.push_async_callback(self.shared_limiter.aclose)
        if self.access_log is not None:
            if id(self.access_log) not in self._inherited:
                self.access_log.open()
            log_file = self.access_log
            stack.callback(lambda: log_file.close() if self.mine(log_file) else None)
            if self.background:
                await stack.enter_async_context(Periodic("access-log", 1.0, self.access_log.tick))
        if self.background and isinstance(self.transport, H1Transport):
            every = self.transport.idle_ttl / 2
            await stack.enter_async_context(Periodic("pool", every, self.transport.prune))
            names = self.transport.names
            await stack.enter_async_context(Periodic("names", 1.0, names.refresh))
        if self.snapshots is not None:
            folder = self.snapshots
            stack.callback(lambda: folder.remove() if self.mine(folder) else None)
            await stack.enter_async_context(Periodic("metrics", 1.0, self._share_counters))
        if not self.background:
            if self.store is not None:
                stack.push_async_callback(self.store.close)
            self._stack = stack
            await self.maintain()
            return self
        if self.dns is not None:
            await self.dns.refresh()
            await stack.enter_async_context(
                Periodic("dns", self.config.dns_refresh, self.dns.refresh)
            )
        interval = self.config.probe.interval
        stack.push_async_callback(self.prober.close)
        if self.store is not None and self.view is not None:
            stack.push_async_callback(self.store.close)
            await self.view.refresh()  # opens the store; takes what a canary already saw
        if any(node.probe is None for node in self.fleet.nodes):
            # Serve no one before every node was looked at: the first round, bounded.
            first = min(self.config.probe.round_deadline, self.config.probe.timeout + 1.0)
            if self.config.canary == "embedded":
                await self.canary.round()
            else:
                await self.prober.round(first)
        if self.config.canary == "embedded":
            await stack.enter_async_context(Periodic("canary", interval, self.canary.tick))
        else:
            await stack.enter_async_context(Periodic("fallback-probes", interval, self._fallback))
        if self.view is not None:
            await stack.enter_async_context(
                Periodic("store-view", self.config.store_refresh, self.view.refresh)
            )
        if self.config.outlier.enabled:
            await stack.enter_async_context(Periodic("outliers", 1.0, self._review_outliers))
        if self.rates is not None:
            await stack.enter_async_context(Periodic("rates", 1.0, self._sample))
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

    async def _close(self, resource: Any) -> None:
        if self.mine(resource):
            await resource.aclose()

    async def maintain(self) -> None:
        """Serverless hosts, before each request: the housekeeping that is due, done inline.

        Each task runs at most once per its period (a frozen process catches up with one run,
        not many); the routing policy is the configured one while the canary's records are
        fresh, and the race otherwise (no store, an empty one, or a canary that stopped).
        """
        now = self.clock()
        if self.dns is not None and self._is_due("dns", now, self.config.dns_refresh):
            await self.dns.refresh()
        if self.view is not None and self._is_due("view", now, self.config.store_refresh):
            await self.view.refresh()
        if self.config.outlier.enabled and self._is_due("outliers", now, 1.0):
            await self._review_outliers()
        fresh = self.view is not None and not self.view.stale()
        self.router.policy = self.policy if fresh else self.race

    def _is_due(self, task: str, now: float, every: float) -> bool:
        if now < self._due.get(task, now):
            return False
        self._due[task] = now + every
        return True

    async def _sample(self) -> None:
        if self.rates is not None:
            self.rates.sample(sum(self.stats.requests.values()), time.time())

    async def _share_counters(self) -> None:
        assert self.snapshots is not None
        self.snapshots.write(self.stats.snapshot(self.fleet.nodes))

    async def _review_outliers(self) -> None:
        jitter = 0.85 + 0.3 * self.rng.random()
        for group in self.groups.values():
            for node in eject_outliers(group.fleet, self.clock(), self.outliers, jitter):
                log.warning("node %s ejected as an outlier: %s", node.name, node.last_error)

    async def _fallback(self) -> None:
        """External canary: probe for ourselves while the store brings nothing fresh."""
        if self.view is None or self.view.stale():
            probe = self.config.probe
            await self.prober.round(probe.round_deadline, wait=probe.interval)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
