"""The configuration model: frozen, typed pydantic models, validated once, every key
documented (its docstring is its entry in ``docs/configuration.md``)."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .ttl import parse_ttl
from .urls import REDACTED, display_url

DEFAULT_NODES = (
    "https://api.steemit.com",
    "https://api.justyy.com",
    "https://api.steemitdev.com",
    "https://api2.justyy.com",
    "https://api.pennsif.net",
    "https://api.moecki.online",
    "https://api.botsteem.com",
    "https://steemapi.boylikegirl.club",
)

Strategy = Literal[
    "fastest",
    "race",
    "round_robin",
    "weighted",
    "random",
    "least_conn",
    "ip_hash",
    "first",
    "max_block",
    "latest_version",
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
CHAINS: tuple[str, ...] = ("steem", "hive", "blurt", "evm")
"""The chain presets' names; each is one module of ``health/chains`` (a test keeps the two in
step: the config layer imports nothing above it)."""


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``500ms``, ``60s``, ``60``, ``1m``, ``1h`` or ``2d``."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 60s, 1m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _seconds(value: Any) -> Any:
    """A time setting: a number of seconds, or a duration string (``"1.5s"``, ``"2d"``)."""
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        return parse_duration(value)
    return value


_NUMBER = re.compile(r"\s*-?\d+(?:\.\d+)?\s*")
Seconds = Annotated[float, BeforeValidator(_seconds)]


def _url_of(url: str, schemes: tuple[str, str], article: str) -> str:
    """A node URL, stripped, of one of ``schemes``, with a host and a valid port."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be {article} {schemes[0]}:// or {schemes[1]}:// URL with a host")
    try:
        parts.port  # noqa: B018 - reading it validates the port
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc})") from None
    return url


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeConfig(_Model):
    """One upstream node."""

    url: str
    """The node's ``http://`` or ``https://`` URL; a path (``/v3/${INFURA_KEY}``) and a query
    are sent as given."""
    name: str = ""
    """Shown in headers, logs, status and metric labels instead of the URL; defaults to the
    URL without credentials or query, with every part that came from ``${ENV}`` (an API key
    in the path) shown as ``[redacted]``."""
    weight: float = Field(1.0, ge=0)
    """The node's share for ``weighted``, ``least_conn``, ``ip_hash`` and ``fastest``; 0 drains
    it (no new requests)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent to this node with every request and probe (a shared secret such as
    ``X-Edge-Key``); values from ``${ENV}`` are never shown."""
    verify_tls: bool = True
    """``false`` accepts any TLS certificate from this node (logged as a warning at start)."""
    ws_url: str | None = None
    """Where the node takes WebSocket subscriptions (``eth_subscribe``): a ``ws://`` or
    ``wss://`` URL; default: ``url`` with ``http`` made ``ws`` (same host, port and path, as
    ganache, Erigon and geth with one port serve it)."""
    _masked: str | None = PrivateAttr(default=None)
    """The URL with every value from the environment masked, when it had any."""

    @property
    def key(self) -> str:
        """The node's identity in the shared health store: its URL, unless the URL may hold
        a secret (a value from the environment, credentials, a query, a key-like path);
        then its shown form and a digest of the whole, so that no store holds the secret."""
        shown = display_url(self._masked or self.url)
        parts = urlsplit(self.url)
        plain = not parts.query and "@" not in parts.netloc and REDACTED not in shown
        if self._masked is None and plain:
            return self.url
        return f"{shown}#{hashlib.sha256(self.url.encode()).hexdigest()[:16]}"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return _url_of(url, ("http", "https"), "an")

    @field_validator("ws_url")
    @classmethod
    def _check_ws_url(cls, url: str | None) -> str | None:
        return None if url is None else _url_of(url, ("ws", "wss"), "a")

    @property
    def subscribe_url(self) -> str:
        """The URL subscriptions go to (``ws_url``, else ``url`` as ``ws``/``wss``)."""
        if self.ws_url is not None:
            return self.ws_url
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    @model_validator(mode="after")
    def _default_name(self, info: ValidationInfo) -> NodeConfig:
        masks = info.context.get("masks") if isinstance(info.context, dict) else None
        masked = masks.get(self.url) if masks else None
        if masked is not None:
            self._masked = masked.strip()
        if not self.name:
            object.__setattr__(self, "name", display_url(self._masked or self.url))
        return self


class StrategyConfig(_Model):
    """The node-selection policy and its parameters."""

    name: Strategy = "fastest"
    """How a node is picked among the usable ones: ``fastest``, ``race``, ``round_robin``,
    ``weighted``, ``random``, ``least_conn``, ``ip_hash``, ``first``, ``max_block`` or
    ``latest_version`` (see docs/how-it-chooses.md)."""
    race_ttl: Seconds = Field(0.0, ge=0)
    """race: reuse the winner of a race for this many seconds (0: race every request)."""
    model: Literal["load", "peak_ewma"] = "load"
    """fastest: ``load`` predicts each node's latency at the load the request would meet
    (learned per node from the answers); ``peak_ewma`` is the classic rule, peak-EWMA
    latency x (in flight + 1), kept for comparison."""
    decay: Seconds = Field(10.0, gt=0)
    """fastest with ``model: peak_ewma``: seconds over which an unused node's estimate fades."""
    choices: int | None = Field(None, ge=2)
    """fastest: how many random nodes are compared per pick (2: power of two choices); by
    default every node up to 16 with ``model: load``, 3 with ``peak_ewma``."""


class Timeouts(_Model):
    connect: Seconds = Field(2.0, gt=0)
    """Seconds to open a connection to a node."""
    per_try: Seconds = Field(5.0, gt=0)
    """Seconds one try on one node may take; a failed try counts with at least this as its
    latency."""
    total: Seconds = Field(12.0, gt=0)
    """Seconds a whole client request may take, retries and hedges included: its deadline."""


class ProbeConfig(_Model):
    interval: Seconds = Field(10.0, gt=0)
    """Seconds between canary rounds."""
    timeout: Seconds = Field(3.0, gt=0)
    """Seconds one probe call may take."""
    concurrency: int = Field(16, ge=1)
    """Probe calls in flight at once during a round."""
    round_deadline: Seconds = Field(20.0, gt=0)
    """Seconds a whole round may take; nodes not answered by then are left for the next. (A
    periodic round stops waiting after ``interval``: the probes still out go on and are
    applied when they end.)"""


class CircuitBreaker(_Model):
    failures: int = Field(5, ge=1)
    """Consecutive failed tries that eject a node."""
    cooldown: Seconds = Field(10.0, gt=0)
    """Seconds an ejected node sits out, doubled on each repeated ejection (up to 8 times
    this); then it gets one trial try."""


class HedgeConfig(_Model):
    """Hedged reads: a read still unanswered after about its node's ``quantile`` latency
    goes to a second node as well; the first good answer wins."""

    enabled: bool = True
    """``false`` turns hedging off."""
    quantile: float = Field(0.95, gt=0, lt=1)
    """A read is hedged once it has waited this quantile of its node's recent latency
    (0.95: about its p95)."""
    min_delay: Seconds = Field(0.01, ge=0)
    """Seconds a read waits at least before it is hedged."""
    max_delay: Seconds = Field(1.0, gt=0)
    """Seconds a read waits at most before it is hedged."""
    min_samples: int = Field(20, ge=1)
    """Answers a node must have given before its ``quantile`` times its hedges; until then
    they wait three times its predicted latency."""


class ConsistencyConfig(_Model):
    """One chain, whatever node answers (docs/consistency.md)."""

    monotonic_head: bool = True
    """Never tell a client a lower head than it was told before: an answer to a call that
    reports the head (``get_dynamic_global_properties``, ``eth_blockNumber``) that is behind
    the highest one this group has given is replaced by that one. ``false``: each node's
    answer as it is."""
    hold_for: Seconds = Field(30.0, gt=0)
    """Seconds the head is held while every answer is behind it; then the lower answers are
    passed on (the nodes that reached it are gone)."""
    share: bool = True
    """With ``cache.url``, every process that shares that Redis (instances, workers) holds
    one head: an answer that reports the head is settled with it before it goes out (one
    Redis call on those calls only). ``false``: each process holds its own."""
    read_your_writes: bool = True
    """After a client's broadcast is accepted, its reads that could see it (accounts,
    balances, nonces, the transaction: not the chain's properties, a block by number, the
    version) go to the node that accepted it (or to one whose head passed the transaction's
    block) and skip cache entries that could be older, for ``read_your_writes_for``
    seconds. The client is its API key, else its address. ``false``: its reads are routed
    and cached as anyone's."""
    read_your_writes_for: Seconds = Field(30.0, gt=0)
    """Seconds a client's reads follow its latest broadcast (the slowest usable node passes
    its block within ``max_block_lag`` blocks)."""
    fork_choice: bool = True
    """A node whose head block's hash (read by the probes) is not the one most of its
    group's nodes have at that height is excluded (``forked``) until it is on their chain
    again. ``false``: hashes are not compared."""


class BroadcastConfig(_Model):
    """Transactions sent to the chain (docs/consistency.md)."""

    resend: bool = True
    """A signed transaction whose fate is unknown (its node failed or timed out after the
    bytes left) goes to another node, on chains that refuse a transaction they have (Steem,
    Hive, Blurt); a node's "already have it" is then the success it stands for. Never for
    anything else (a method not known to take transactions, a ``call`` to a numbered API).
    ``false``: a broadcast is never sent twice."""
    fanout: int = Field(1, ge=1, le=3)
    """Nodes each such transaction is sent to at once; the first answer wins (2: faster
    inclusion, and a node dying costs nothing). Needs ``resend``."""

    @model_validator(mode="after")
    def _fanout_needs_resend(self) -> BroadcastConfig:
        if self.fanout > 1 and not self.resend:
            raise ValueError(
                "broadcast.fanout above 1 sends a transaction to several nodes: it needs "
                "broadcast.resend (the same guarantee that a node refuses a duplicate)"
            )
        return self


class WebSocketConfig(_Model):
    """JSON-RPC over WebSocket on the server's port, and EVM subscriptions (docs/websocket.md)."""

    enabled: bool = True
    """Accept WebSocket connections (an HTTP/1.1 ``Upgrade`` on ``/``, ``wss://`` with TLS).
    ``false``: an upgrade is refused with 400."""
    max_connections: int = Field(10_000, ge=1)
    """Open WebSocket connections per process; the next is refused with 503."""
    max_subscriptions: int = Field(100, ge=0)
    """Subscriptions one connection may hold; the next ``eth_subscribe`` is refused."""
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    """The largest message a client may send (a larger one closes the connection, 1009)."""
    max_buffered_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    """Bytes written to a client that it has not read yet: past this, a slow reader's
    connection is closed (1008, "slow reader") instead of holding memory without bound."""
    ping_interval: Seconds = Field(20.0, gt=0)
    """Seconds between the server's pings on a quiet connection."""
    ping_timeout: Seconds = Field(20.0, gt=0)
    """Seconds a ping waits for its pong before the connection is closed (1011)."""
    switch_lag: int = Field(2, ge=1)
    """Blocks a node carrying subscriptions may fall behind the best head known before its
    subscriptions move to another node (the missed heads and logs are fetched by number)."""
    silent_after: Seconds | None = Field(None, gt=0)
    """Seconds without a head from a node carrying subscriptions, while another node shows a
    newer one, before they move; default: three block intervals of the chain."""
    max_gap: int = Field(128, ge=1)
    """Blocks a subscription fills after a switch or a skip; a longer gap is filled with its
    latest blocks only (the client sees the jump)."""


class BudgetConfig(_Model):
    """Retries and hedges together: at most ``ratio`` extra tries per request."""

    ratio: float = Field(0.1, ge=0, le=1)
    """Share of an extra try each client request earns (0.1: one retry or hedge per ten
    requests); 0 leaves only ``min_per_second``."""
    min_per_second: float = Field(3.0, ge=0)
    """Extra tries a second earned however quiet the traffic, so a quiet balancer can
    still retry."""
    burst: float = Field(20.0, ge=1)
    """Extra tries that can be saved up at most; hedges leave the last quarter of them to
    retries."""


class OutlierConfig(_Model):
    """Ejection of a node whose success rate is well below its peers'."""

    enabled: bool = True
    """``false`` turns outlier ejection off (the circuit breaker still acts)."""
    min_requests: int = Field(20, ge=1)
    """Recent requests a node must have had before its success rate is judged."""
    stdev_factor: float = Field(1.9, gt=0)
    """A node is an outlier when its success rate is below the mean of the other nodes' by
    more than this many of their standard deviations (and by 5 points at least)."""
    min_success: float = Field(0.9, ge=0, le=1)
    """A node is an outlier only below this success rate as well."""
    base_ejection: Seconds = Field(10.0, gt=0)
    """Seconds of a first ejection; doubled for each repeat, with jitter."""
    max_ejection: Seconds = Field(300.0, gt=0)
    """Seconds an ejection lasts at most, however often the node was ejected."""
    max_ejected: float = Field(0.5, ge=0, le=1)
    """At most this share of the fleet is ejected at once."""
    slow_start: Seconds = Field(10.0, ge=0)
    """Seconds over which a node coming back ramps up to its full share."""


class Listen(_Model):
    host: str = "127.0.0.1"
    """Address the server listens on (``0.0.0.0``: every interface)."""
    port: int = Field(8080, ge=0, le=65535)
    """TCP port the server listens on (0: any free port)."""
    tls_cert: str | None = None
    """PEM certificate chain: with ``tls_key``, the server speaks HTTPS (TLS 1.2 or newer)."""
    tls_key: str | None = None
    """PEM private key for ``tls_cert``; the two go together."""
    reuse_port: bool = True
    """Listen with SO_REUSEPORT: another rpcbalancer (a new version) may listen on the same
    port beside this one, which is how an upgrade replaces it without a failed request
    (docs/operations.md). ``false``: the port is this process's alone."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> Listen:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class ServerLimits(_Model):
    """What one client connection may send (the standalone server enforces these)."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Bytes of request headers at most (431 beyond)."""
    max_headers: int = Field(100, ge=8)
    """Request headers at most (431 beyond)."""
    max_body: int = Field(8 * 1024 * 1024, ge=1024)
    """Bytes of request body at most (413 beyond, before reading it when Content-Length
    says so)."""
    request_timeout: Seconds = Field(30.0, gt=0)
    """Seconds from a request's first byte to its last (slow clients get 408)."""
    idle_timeout: Seconds = Field(30.0, gt=0)
    """Seconds a kept-alive connection may sit idle between requests."""
    max_pipeline: int = Field(32, ge=1)
    """Pipelined requests queued on one connection before reading from it pauses."""
    max_batch: int = Field(100, ge=1, le=10000)
    """JSON-RPC calls in one batch."""
    max_depth: int = Field(32, ge=2, le=512)
    """How deep arrays and objects may nest in a request."""


class OverloadConfig(_Model):
    """What one worker process takes on before it refuses new requests at once (503 with
    ``Retry-After`` and a JSON-RPC error, before the request is read as JSON-RPC)."""

    max_inflight: int = Field(4096, ge=0)
    """Requests one worker answers at once (read, not yet answered); the next is refused.
    0: no limit."""
    max_queue_time: Seconds = Field(0.005, ge=0)
    """Seconds a request may wait for the worker to read it: when the worker's event loop
    has run this late for ``interval``, it admits only a share of the new requests,
    steered by how late it runs, until it serves them all on time again. 0: off."""
    interval: Seconds = Field(0.1, gt=0)
    """Seconds the queue time must stay above ``max_queue_time`` before requests are
    refused (a burst passes)."""
    retry_after: int = Field(1, ge=1, le=3600)
    """Seconds a refused client is told to wait (``Retry-After``)."""


class RateLimit(_Model):
    """A token bucket per client (address, or API key): ``rate`` calls a second on average,
    up to ``burst`` at once. A batch costs one token per call. DoctorLai's ``windowMs`` /
    ``maxRequests`` become ``rate = max_requests / window`` and ``burst = max_requests``."""

    rate: float = Field(10.0, gt=0)
    """Calls a second each client may make on average."""
    burst: int = Field(20, ge=1)
    """Calls a client may make at once: the size of its bucket."""
    shared: bool = True
    """With a Redis store, every instance sharing it enforces one limit."""
    max_clients: int = Field(100_000, ge=100)
    """Clients tracked in memory at most (the least recently seen are forgotten)."""

    @model_validator(mode="before")
    @classmethod
    def _from_window(cls, value: Any) -> Any:
        if isinstance(value, dict) and ("window_ms" in value or "max_requests" in value):
            value = dict(value)
            window_ms, count = value.pop("window_ms", 60000), value.pop("max_requests", 600)
            numbers = all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in (window_ms, count)
            )
            if not numbers or window_ms <= 0 or count < 1:
                raise ValueError("window_ms and max_requests must be positive numbers")
            window = float(window_ms) / 1000.0
            value.setdefault("rate", count / window)
            value.setdefault("burst", int(count))
        return value


class MethodRules(_Model):
    """Which JSON-RPC methods this endpoint serves: shell-style patterns (``*.broadcast_*``,
    ``condenser_api.get_*``). A method must match ``allow`` when it is not empty, and must
    not match ``deny``."""

    allow: tuple[str, ...] = ()
    """Patterns of the methods served; empty: every method not denied."""
    deny: tuple[str, ...] = ()
    """Patterns of the methods refused (403 with -32601)."""


class ApiKey(_Model):
    name: str = Field(min_length=1, max_length=64)
    """The key's name, under which its rate limit and method rules are kept; the key
    itself is never logged."""
    key: str = Field(min_length=16, max_length=256)
    """The secret itself; give it as ``${ENV_VAR}`` so it never sits in the file."""
    rate_limit: RateLimit | None = None
    """This key's own limit (instead of the per-address one)."""
    methods: MethodRules = MethodRules()
    """What this key may call, on top of the endpoint's own ``methods`` rules (a method
    must pass both): a key for reads only, say, with ``deny: ["*broadcast*"]``."""


class ApiKeys(_Model):
    keys: tuple[ApiKey, ...] = Field(min_length=1)
    """The keys, at least one."""
    required: bool = True
    """Refuse requests without a valid key (401); ``false``: keys only lift the limits."""
    header: str = "x-api-key"
    """The header carrying the key; a key may also be the request path (``POST /KEY``)."""


class AdminConfig(_Model):
    """The operator's routes (``POST /admin/...``: reload, drain), never open by default."""

    key: str | None = Field(None, min_length=16, max_length=256)
    """The key the operator's requests carry (``Authorization: Bearer KEY``); give it as
    ``${ENV_VAR}`` so that it never sits in the file. None: the routes are not served
    (``SIGHUP`` still reloads)."""


class MetricsConfig(_Model):
    enabled: bool = True
    """Serve ``GET /metrics`` in Prometheus text format."""
    methods: tuple[str, ...] = ()
    """JSON-RPC methods allowed as metric labels besides the chain preset's common ones."""


def _ttl(value: Any) -> Any:
    return parse_ttl(value)


Ttl = Annotated[float, BeforeValidator(_ttl)]


class ProbeCallConfig(_Model):
    """A probe for backends that are not chain nodes (hivemind, say): one JSON-RPC call,
    healthy when it gets a result."""

    method: str = Field(min_length=1)
    """The JSON-RPC method to call (``hive.db_head_state``)."""
    params: list[Any] | dict[str, Any] = Field(default_factory=list)
    """Its parameters."""


class UpstreamGroup(_Model):
    """A named group of backends: its own nodes, strategy, probes, timeout and retries."""

    nodes: tuple[NodeConfig, ...] = Field(min_length=1)
    """The group's nodes, as ``nodes`` takes them (URLs, or mappings with ``url``...)."""
    strategy: StrategyConfig | None = None
    """The group's strategy; none: the top-level ``strategy``."""
    probe: Literal["chain", "passive"] | ProbeCallConfig = "chain"
    """``chain``: the chain preset's probes (head block, version); ``passive``: no active
    probe, health from the answers alone; or one call ``{method, params}``."""
    timeout: Seconds | None = None
    """Seconds a try may take on this group; none: ``timeouts.per_try``."""
    retries: int | None = Field(None, ge=0, le=10)
    """Further tries after a failed read on this group; none: the top-level ``retries``."""
    translate_to_appbase: bool = False
    """Forward the legacy calls routed here (``get_block``, ``call`` of ``database_api``) as
    ``condenser_api.*`` calls."""

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes_from_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class QuorumConfig(_Model):
    """Reads asked of several nodes, answered when enough agree (docs/consistency.md)."""

    ask: int = Field(3, ge=2, le=7)
    """Nodes each read goes to at once."""
    agree: int = Field(2, ge=1, le=7)
    """Nodes that must give the same answer; a node that answered otherwise is ejected."""

    @model_validator(mode="after")
    def _agree_within_ask(self) -> QuorumConfig:
        if self.agree > self.ask:
            raise ValueError(f"quorum.agree ({self.agree}) is more than quorum.ask ({self.ask})")
        return self


class RouteConfig(_Model):
    """What a method prefix is served by, and how (unset: a shorter prefix decides)."""

    upstream: str | None = None
    """The group that serves it."""
    ttl: Ttl | None = None
    """How long an answer is cached: seconds, ``0`` or ``NO_EXPIRE`` (forever), ``-1`` or
    ``NO_CACHE``, ``-2`` or ``EXPIRE_IF_REVERSIBLE`` (forever once its block is
    irreversible); none: the chain preset's default for the method."""
    timeout: Seconds | None = Field(None, ge=0)
    """Seconds a try may take (``0``: no limit but the request's own deadline)."""
    retries: int | None = Field(None, ge=0, le=10)
    """Further tries after a failed read."""
    limit: int | None = Field(None, ge=0)
    """The most one call may ask for, where the chain preset counts it (docs/consistency.md):
    account history entries (``get_account_history``'s ``limit``), a block range's blocks
    (``get_block_range``), a log query's blocks (``eth_getLogs``); a call that asks for more
    is refused with an error naming the limit. ``0``: no limit; none: the preset's (1000
    entries, 1000 blocks, 1000000 log blocks)."""
    split: int | None = Field(None, ge=0)
    """An ``eth_getLogs`` over more blocks than this goes out in chunks of this many blocks,
    across nodes, and the logs come back merged in order; ``0``: never split; none: the
    preset's (10000 blocks)."""
    quorum: QuorumConfig | None = None
    """Ask several nodes and answer what enough agree on (reads only; a broadcast under
    the prefix goes to one node as always); none: one node answers."""

    @model_validator(mode="before")
    @classmethod
    def _group_name(cls, value: Any) -> Any:
        return {"upstream": value} if isinstance(value, str) else value


class CacheConfig(_Model):
    """The answer cache: repeated reads answered without asking a node."""

    enabled: bool = True
    """Answer repeated reads from the cache (on by default: the chain preset gives each
    method a sensible TTL, ``routes`` override it; ``false`` turns it off, and coalescing
    with it unless there are several groups)."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Bytes of answers kept in this process at most (least recently used go first)."""
    max_item_bytes: int = Field(1024 * 1024, ge=64)
    """Answers larger than this are never cached."""
    url: str | None = None
    """A Redis URL (may be the health store's) for a cache shared by every instance; none:
    in this process only. Redis down: in-process only, never a failed request. The
    instances sharing it also hold one head (``consistency.share``), cache on or off."""
    coalesce: bool = True
    """Identical reads in flight share one upstream call."""

    @field_validator("url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// URL")
        return value


class AccessLogConfig(_Model):
    enabled: bool = True
    """``false``: no access log."""
    path: str = "-"
    """Where the JSON lines go: ``-`` for standard output, or a file (appended to)."""
    sample: float = Field(1.0, ge=0, le=1)
    """Share of successful requests logged; failed ones are always logged."""
    bodies: bool = False
    """Log request bodies (truncated to ``body_max`` bytes, secrets redacted)."""
    body_max: int = Field(512, ge=0, le=65536)
    """Bytes of a request body logged at most, with ``bodies: true``."""


class Config(_Model):
    """The whole configuration of one balancer."""

    chain: str = "steem"
    """The chain preset: ``steem``, ``hive``, ``blurt`` or ``evm``; it sets the probe calls,
    the broadcast methods and which node errors mean the node is unwell."""
    nodes: tuple[NodeConfig, ...] = ()
    """The upstream nodes: URLs, or mappings with ``url`` and the keys below; by default the
    public Steem nodes. ``RPCBALANCER_NODES`` replaces the list. They are the group
    ``default`` when ``upstreams`` names other groups."""
    strategy: StrategyConfig = StrategyConfig()
    """The strategy: a name (``fastest``), or a mapping with ``name`` and its parameters."""
    timeouts: Timeouts = Timeouts()
    """Time limits of connections, tries and whole requests."""
    retries: int = Field(2, ge=0, le=10)
    """Further tries on other nodes after a failed read (0: none); broadcasts are never
    sent twice."""
    node_concurrency: int = Field(256, ge=0)
    """Requests in flight to one node at most (0: no cap); the rest wait for a slot."""
    queue_size: int = Field(1024, ge=0)
    """Requests that may wait for a slot at once; beyond, 503 at once."""
    max_block_lag: int = Field(10, ge=0)
    """Blocks a node may lag behind the best node before it is excluded (10: about 30 s on
    Steem)."""
    max_head_age: Seconds = Field(90.0, gt=0)
    """Seconds a node's head block may be old before the node is excluded."""
    min_version: str | None = None
    """The lowest chain version a node may run (``0.23.0``); none: any version."""
    annotate: Literal["headers", "body"] = "headers"
    """``headers``: response headers name the node (they always do); ``body`` also adds
    ``__server__`` and ``__version__`` to JSON object replies, as the original design did."""
    listen: Listen = Listen()
    """Where the standalone server listens, and its TLS certificate."""
    limits: ServerLimits = ServerLimits()
    """What one client connection and one request may send."""
    overload: OverloadConfig = OverloadConfig()
    """When one worker refuses new requests at once: too many in flight, or a standing
    queue (the standalone server)."""
    store: str = "sqlite:///rpcbalancer-health.db"
    """The shared health store's URL (``sqlite:///file.db``, ``redis://host:port/db``,
    ``postgresql://...``, ``dynamodb://table?region=...``); ``none`` keeps health in memory
    only. ``RPCBALANCER_STORE`` replaces it."""
    canary: Literal["embedded", "external"] = "embedded"
    """``embedded``: this process probes (under the store's lease); ``external``: another
    process does (``rpcbalancer canary``, the scheduled Lambda) and this one only reads."""
    store_refresh: Seconds = Field(2.0, gt=0)
    """Seconds the balancer keeps its copy of the store's view before reading it again."""
    history_retention: Seconds = Field(86400.0, gt=0)
    """Seconds of probe history the store keeps (for ``rpcbalancer status`` and the status
    page)."""
    probe: ProbeConfig = ProbeConfig()
    """The canary's rounds of probes."""
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    """Ejection of a node after consecutive failed tries."""
    hedge: HedgeConfig = HedgeConfig()
    """Hedged reads: a slow read is also sent to a second node."""
    budget: BudgetConfig = BudgetConfig()
    """The one budget retries and hedges share."""
    outlier: OutlierConfig = OutlierConfig()
    """Ejection of a node whose success rate is well below its peers'."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs (``10.0.0.0/8``) of the proxies whose ``X-Forwarded-For`` names the client, for
    rate limits, ``ip_hash`` and the log; empty: the peer address is the client."""
    forward_paths: bool = False
    """Append the client's path and query to each node's URL; ``false``: paths other than
    ``/`` get 404."""
    resolve_dns: bool = False
    """Make one node of each address a node's host name resolves to (the Host header and TLS
    SNI keep the name)."""
    dns_refresh: Seconds = Field(60.0, gt=0)
    """Seconds between resolutions of the node names: a name's answer serves new connections
    this long, then is looked up again in the background (a failed lookup keeps the last
    answer, so a slow or failing resolver never delays a node already resolved); with
    ``resolve_dns: true``, also how often the nodes per address are made again."""
    user_agent: str = "rpcbalancer"
    """User-Agent sent to the nodes, with requests and probes."""
    rate_limit: RateLimit | None = None
    """A rate limit per client; none: no limit. DoctorLai's ``{window_ms, max_requests}``
    is also accepted."""
    methods: MethodRules = MethodRules()
    """Which JSON-RPC methods this endpoint serves."""
    api_keys: ApiKeys | None = None
    """API keys, each with its own limit and method rules; none: no keys."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The application log's level: ``debug``, ``info``, ``warning`` or ``error``."""
    log_format: Literal["text", "json"] = "text"
    """``text``, or ``json`` for one JSON object per application log line."""
    access_log: AccessLogConfig = AccessLogConfig()
    """The JSON access log, one line per request."""
    metrics: MetricsConfig = MetricsConfig()
    """The Prometheus endpoint."""
    admin: AdminConfig = AdminConfig()
    """The operator's routes: reload the configuration, drain a node (docs/operations.md)."""
    deployment_version: str | None = None
    """This deployment's own version, as its operator names it (a commit, a date):
    ``/version`` reports it beside rpcbalancer's (DoctorLai's ``version``)."""
    compat: Literal["none", "doctorlai"] = "none"
    """``doctorlai``: ``GET /``, ``/health``, ``/version`` and ``/metrics`` (also) answer as
    DoctorLai/steem-load-balancer's do, for the monitoring written for it (set when its
    config file is read; see "Coming from DoctorLai" below)."""
    explain: bool = False
    """Allow ``X-RPC-Explain: 1`` on a request to get the node scores in ``X-RPC-Scores``."""
    upstreams: dict[str, UpstreamGroup] = Field(default_factory=dict)
    """Named groups of backends (``hivemind``, ``hafah``...) that ``routes`` send methods
    to; ``nodes`` are the group ``default``. The first group (``default`` when there are
    ``nodes``) serves what no route names. Empty: one group, ``default``."""
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    """Method prefixes (``appbase.condenser_api.get_block``, ``bridge``, a legacy ``steemd``)
    to a group (a name) or ``{upstream, ttl, timeout, retries}``; the longest prefix decides
    each setting. The chain preset adds its own routes under these."""
    preset_routes: bool = True
    """The chain preset's routes: the social calls (``bridge``, ``hive``, ``follow_api``, the
    social ``condenser_api`` calls) to a group named ``hivemind``, account history to one
    named ``hafah`` or ``account_history``, when such a group is configured. ``false``: only
    ``routes`` (jussi and drone configs are read so)."""
    equivalent_methods: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """A method (as sent, ``block_api.get_block``) and the dotted names routed and cached as
    it (``appbase.condenser_api.get_block``)."""
    cache: CacheConfig = CacheConfig()
    """The answer cache and the merging of identical reads in flight."""
    broadcast: BroadcastConfig = BroadcastConfig()
    """Transactions: sent again when their node fails, or to several nodes at once."""
    consistency: ConsistencyConfig = ConsistencyConfig()
    """What a client sees of the chain across nodes at different heights."""
    websocket: WebSocketConfig = WebSocketConfig()
    """JSON-RPC calls and EVM subscriptions over WebSocket."""
    secrets: frozenset[str] = frozenset()
    """Filled in by the loader (not a key to write): the values that came from ``${ENV}``,
    so that they can be redacted wherever they would be shown."""

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes_from_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def groups(self) -> dict[str, UpstreamGroup]:
        """Every group by name, ``default`` first (made of ``nodes`` when they are given)."""
        found: dict[str, UpstreamGroup] = {}
        if self.nodes:
            found["default"] = UpstreamGroup(nodes=self.nodes)
        found.update(self.upstreams)
        return found

    def all_nodes(self) -> tuple[NodeConfig, ...]:
        """Every node of every group."""
        nodes = list(self.nodes)
        for group in self.upstreams.values():
            nodes += group.nodes
        return tuple(nodes)

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_string(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        if not isinstance(value, str) or not re.fullmatch(r"\d+(\.\d+)*", value.strip()):
            raise ValueError("must be a dotted version such as 0.23.0")
        return value.strip()

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        value = value.strip()
        schemes = ("sqlite", "redis", "rediss", "unix", "postgresql", "postgres", "dynamodb")
        if value.lower() == "none" or urlsplit(value).scheme in schemes:
            return value
        raise ValueError(
            "must be none, sqlite:///file.db, redis://host:port/db, postgresql://... "
            "or dynamodb://table?region=..."
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_relations(self) -> Config:
        if not self.nodes and not self.upstreams:
            raise ValueError("nodes: give at least one node (or groups in upstreams)")
        if self.nodes and "default" in self.upstreams:
            raise ValueError("upstreams.default: the nodes are the group default: give one")
        groups = {*(["default"] if self.nodes else []), *self.upstreams}
        for prefix, route in self.routes.items():
            if route.upstream is not None and route.upstream not in groups:
                known = ", ".join(sorted(groups))
                raise ValueError(
                    f"routes.{prefix}.upstream: no group {route.upstream!r} (known: {known})"
                )
        for name, group in self.groups().items():
            seen: set[str] = set()
            for node in group.nodes:
                if node.url in seen:
                    where = "nodes" if name == "default" and self.nodes else f"upstreams.{name}"
                    raise ValueError(f"{where}: {node.name} is listed twice")
                seen.add(node.url)
        # One URL in two groups is one node serving two roles (a full node behind both the
        # chain routes and the hivemind ones): the balancer tells them apart by group.
        distinct = {node.url: node for node in self.all_nodes()}.values()
        names: dict[str, int] = {}
        for node in distinct:
            if node.name in names and "name" in node.model_fields_set:
                raise ValueError(f"nodes: the name {node.name!r} is given to two nodes")
            names[node.name] = names.get(node.name, 0) + 1
        for name in [n for n, count in names.items() if count > 1]:
            # Two URLs that differ only in what is not shown (a key, a query): number them,
            # so that headers, logs and metric labels still tell them apart.
            same = [n for n in distinct if n.name == name]
            for k, node in enumerate(same[1:], start=2):
                for twin in self.all_nodes():
                    if twin.url == node.url:
                        object.__setattr__(twin, "name", f"{name} #{k}")
        if self.chain not in CHAINS:
            raise ValueError(f"chain: unknown preset {self.chain!r} (known: {', '.join(CHAINS)})")
        return self
