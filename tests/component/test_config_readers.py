"""Every config key that is accepted does something: the server, started in this process with
every key set, reads each one while it starts and serves (a key that validated and was then
never looked at would be a promise the code does not keep)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from pydantic import BaseModel

from rpcbalancer.commands import cli
from rpcbalancer.config import Config, from_mapping
from rpcbalancer.hosts.standalone import serve_async
from rpcbalancer.sim import Behaviour, FakeNode

from ..conftest import free_port

KEY = "reader-key-0123456789abcdef"


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    seen.add(model)
    for info in model.model_fields.values():
        for kind in (info.annotation, *get_args(info.annotation)):
            for inner in (kind, *get_args(kind)):
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    _models(inner, seen)


@pytest.fixture
def reads() -> Iterator[set[tuple[str, str]]]:
    """(model, field) pairs read while the fixture is active, for every config model."""
    models: set[type[BaseModel]] = set()
    _models(Config, models)
    found: set[tuple[str, str]] = set()
    saved = {}
    for model in models:
        fields = frozenset(model.model_fields)
        saved[model] = model.__dict__.get("__getattribute__")

        def spy(self: Any, name: str, _fields: frozenset[str] = fields) -> Any:
            if name in _fields:
                found.add((type(self).__name__, name))
            return object.__getattribute__(self, name)

        model.__getattribute__ = spy  # type: ignore[method-assign,assignment]
    try:
        yield found
    finally:
        for model, original in saved.items():
            if original is None:
                del model.__getattribute__
            else:
                model.__getattribute__ = original  # type: ignore[method-assign]


def full_config(
    tmp: Path, nodes: list[str], cert: Path, key: Path, strategy: str, model: str
) -> Config:
    """A config that sets every key (each section given, every node option used)."""
    return from_mapping(
        {
            "chain": "steem",
            "nodes": [
                {"url": nodes[0], "name": "a", "weight": 2, "headers": {"X-A": "1"},
                 "verify_tls": False},
                nodes[1],
            ],
            "strategy": {"name": strategy, "race_ttl": 1, "decay": 5, "choices": 2,
                         "model": model},
            "timeouts": {"connect": 1, "per_try": 2, "total": 4},
            "retries": 1,
            "node_concurrency": 8,
            "queue_size": 8,
            "max_block_lag": 10,
            "max_head_age": 90,
            "min_version": "0.20.0",
            "annotate": "body",
            "listen": {"host": "127.0.0.1", "port": free_port(), "tls_cert": str(cert),
                       "tls_key": str(key)},
            "limits": {"max_header_bytes": 8192, "max_headers": 50, "max_body": 65536,
                       "request_timeout": 5, "idle_timeout": 5, "max_pipeline": 4,
                       "max_batch": 10, "max_depth": 8},
            "store": f"sqlite:///{tmp}/health.db",
            "canary": "embedded",
            "store_refresh": 0.2,
            "history_retention": "1h",
            "probe": {"interval": 0.2, "timeout": 1, "concurrency": 2, "round_deadline": 2},
            "circuit_breaker": {"failures": 3, "cooldown": 1},
            "hedge": {"enabled": True, "quantile": 0.9, "min_delay": 0.001, "max_delay": 0.5,
                      "min_samples": 1},
            "budget": {"ratio": 0.2, "min_per_second": 1, "burst": 5},
            "outlier": {"enabled": True, "min_requests": 5, "stdev_factor": 2,
                        "min_success": 0.8, "base_ejection": 1, "max_ejection": 2,
                        "max_ejected": 0.5, "slow_start": 1},
            "trusted_proxies": ["127.0.0.1/32"],
            "forward_paths": True,
            "resolve_dns": True,
            "dns_refresh": 0.2,
            "user_agent": "readers-test",
            "rate_limit": {"rate": 1000, "burst": 1000, "shared": False, "max_clients": 100},
            "methods": {"allow": ["*"], "deny": ["*.broadcast_block"]},
            "api_keys": {
                "keys": [{"name": "k", "key": KEY, "rate_limit": {"rate": 500, "burst": 500},
                          "methods": {"allow": ["*"], "deny": ["*.get_state"]}}],
                "required": False,
                "header": "x-key",
            },
            "log_level": "warning",
            "log_format": "json",
            "access_log": {"enabled": True, "path": str(tmp / "access.log"), "sample": 0.5,
                           "bodies": True, "body_max": 64},
            "metrics": {"enabled": True, "methods": ["condenser_api.get_state"]},
            "explain": True,
            "upstreams": {
                "social": {
                    "nodes": [{"url": nodes[1] + "/social", "name": "social"}],
                    "strategy": strategy,
                    "probe": {"method": "condenser_api.get_version", "params": []},
                    "timeout": 2,
                    "retries": 1,
                    "translate_to_appbase": True,
                }
            },
            "routes": {"appbase.condenser_api.get_version": {"upstream": "social", "ttl": 5,
                                                             "timeout": 1, "retries": 0},
                       "appbase.condenser_api.get_block": {"quorum": {"ask": 2, "agree": 1},
                                                           "limit": 10}},
            "equivalent_methods": {"condenser_api.get_dynamic_global_properties":
                                   ["appbase.database_api.get_dynamic_global_properties"]},
            "cache": {"enabled": True, "max_bytes": 1 << 20, "max_item_bytes": 1 << 16,
                      "url": None, "coalesce": True},
        },
        env={},
    )  # fmt: skip


async def exercise(config: Config, cert: Path) -> None:
    """Start the server as ``serve`` does, and use every route for a couple of seconds."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cli.prepare(config)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    stop = asyncio.Event()
    server = asyncio.create_task(serve_async(config, stop=stop))
    base = f"https://127.0.0.1:{config.listen.port}"
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    body = {"jsonrpc": "2.0", "method": "condenser_api.get_dynamic_global_properties", "id": 1}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as client:
            for _ in range(100):
                try:
                    async with client.get(base + "/version") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            for i in range(30):
                headers = {"x-key": KEY, "x-rpc-explain": "1", "x-forwarded-for": "10.0.0.1"}
                async with client.post(base + "/", json={**body, "id": i}, headers=headers) as r:
                    assert r.status == 200, await r.text()
                async with client.post(base + "/", json=[body, body]) as r:
                    assert r.status == 200
                await asyncio.sleep(0.05)
            version = {"jsonrpc": "2.0", "method": "condenser_api.get_version", "id": 2}
            for _ in range(2):  # routed to its group, then a hit
                async with client.post(base + "/", json=version) as r:
                    assert r.status == 200
            for path in ("/status.json", "/metrics", "/health", "/status", "/extra/path"):
                async with client.get(base + path) as resp:
                    await resp.read()
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


async def exercise_websocket() -> None:
    """The WebSocket keys (an EVM chain's): a simulated EVM node's own WebSocket as its
    ``ws_url``, a client that calls and subscribes to ``newHeads``."""
    from websockets.asyncio.client import connect

    node = FakeNode("e", Behaviour(latency=0.001, block_interval=0.2), chain="evm")
    await node.start()
    try:
        config = from_mapping(
            {
                "chain": "evm",
                "store": "none",
                "listen": {"port": free_port()},
                "nodes": [{"url": node.url, "ws_url": node.url.replace("http", "ws")}],
                "websocket": {
                    "enabled": True, "max_connections": 10, "max_subscriptions": 3,
                    "max_message_bytes": 65536, "max_buffered_bytes": 1 << 20,
                    "ping_interval": 5, "ping_timeout": 5, "switch_lag": 3,
                    "silent_after": 4, "max_gap": 64,
                },
            },
            env={},
        )  # fmt: skip
        stop = asyncio.Event()
        server = asyncio.create_task(serve_async(config, stop=stop))
        try:
            url = f"ws://127.0.0.1:{config.listen.port}/"
            for _ in range(100):
                try:
                    ws = await connect(url)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            async with ws:
                await ws.send('{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}')
                assert b"result" in (await ws.recv(decode=False))
                await ws.send(
                    '{"jsonrpc":"2.0","id":2,"method":"eth_subscribe","params":["newHeads"]}'
                )
                assert b"result" in (await ws.recv(decode=False))
                notice = await asyncio.wait_for(ws.recv(decode=False), 5)
                assert b"eth_subscription" in notice
                await asyncio.sleep(0.6)  # (the subscriptions' watch looks at its node)
        finally:
            stop.set()
            await asyncio.wait_for(server, 15)
    finally:
        await node.stop()


# Each strategy reads its own keys, by design: (strategy, model, keys it leaves unread).
RUNS = [
    ("fastest", "load", {"race_ttl", "decay"}),
    ("fastest", "peak_ewma", {"race_ttl"}),
    ("race", "load", {"decay", "choices", "model"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "model", "others"), RUNS)
async def test_every_config_key_is_read(
    strategy: str,
    model: str,
    others: set[str],
    reads: set[tuple[str, str]],
    tmp_path: Path,
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    nodes = [FakeNode("a", Behaviour(latency=0.002)), FakeNode("b", Behaviour(latency=0.004))]
    for node in nodes:
        await node.start()
    try:
        urls = [nodes[0].url.replace("127.0.0.1", "localhost"), nodes[1].url]
        config = full_config(tmp_path, urls, cert, key, strategy, model)
        reads.clear()  # what validation itself touched does not count
        await exercise(config, cert)
        await exercise_websocket()
    finally:
        for node in nodes:
            await node.stop()
    models: set[type[BaseModel]] = set()
    _models(Config, models)
    everything = {(m.__name__, f) for m in models for f in m.model_fields}
    unread = sorted(everything - reads - {("StrategyConfig", key) for key in others})
    assert not unread, unread
