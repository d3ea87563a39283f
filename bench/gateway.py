"""The API gateway that Steem and Hive actually run: cache by irreversibility, coalescing.

    .venv/bin/python bench/gateway.py [--seconds 60] [--rate 200] [--warmup 10] [--repeat 2]
        [--only rpcbalancer-cache,nginx] [--phases side,hitpath,memory] [--minutes 5]
        [--src OTHER_CHECKOUT] [--drone DRONE_BINARY [--drone-config EXAMPLE.yaml]]
        [--out STEM] [--profile] [--from-json bench/results/gateway.json]

Three phases, each bounded in time and request count, each stopping every process it
started by its PID:

``side``: the side-by-side run. A public-API-like workload (the mix below, Zipf key
popularity) open loop at ``--rate`` requests/s (latency from the *scheduled* send time) for
``--warmup`` + ``--seconds`` seconds against each target in turn: rpcbalancer with the
answer cache (``rpcbalancer-cache``), rpcbalancer without it (``rpcbalancer``), nginx
(round-robin, keep-alive, as scenarios.py), nginx with ``proxy_cache`` on POST keyed by the
request body (``nginx-cache``) and HAProxy (leastconn, as scenarios.py). Behind each, a new
fleet of three simulated full API nodes (chain and social calls; median 80 ms, log-normal
jitter 0.5, 1% of answers at 500 ms), one ``python -m rpcbalancer.sim`` process. The target
is pinned to CPU 1, the fleet and this load to CPU 0. Every answer is checked (errors, stale,
wrong); the nodes' own count of the benchmark's ids gives upstream requests per client
request. Then, for rpcbalancer-cache, a closed loop with one connection (no queueing) times
the answers served from the cache (``X-Cache: hit``).

``hitpath``: wrk (closed loop, 50 connections, one condenser_api.get_block of a fixed old
block with a new id per request) against rpcbalancer-cache after one warming request
(``hit``), against nginx proxying (``nginx-proxy``), and against rpcbalancer with
``cache: {enabled: false}`` (``miss``, its miss path), all to nodes that answer at once
(nginx server blocks returning fixed JSON, as throughput.py); then wrk with one connection,
and the same against one instant node (``node``: the floor of the added latency).
``--src DIR`` adds ``hit@base`` and ``miss@base``: the same configs run from another
checkout (``PYTHONPATH=DIR/src``), interleaved with ``hit`` and ``miss`` in every repeat.
``--drone BIN`` adds Hive's drone (a binary built outside this project; its config derived
from its own example, read from ../shared/peers or beside BIN's source, never copied here):
``drone-hit`` (the same get_block, which drone keeps forever once the block is irreversible)
and ``drone-miss`` (drone with that call's TTL set to NO_CACHE, a different block each
request so that drone's sharing of identical calls in flight cannot answer it). Without BIN,
the drone targets are skipped with the reason printed.

``memory``: rpcbalancer-cache with ``cache.max_bytes`` (``--max-mib``, 32) under wrk at full
load for ``--minutes`` with a key space far larger than the cache (random blocks among
20 million, random accounts among 2 million), to instant nodes; RSS sampled every 15 s.

Writes bench/results/gateway.md and gateway.json for a run of the three phases, and
gateway-<phases>.md/.json for fewer (or ``--out STEM``), so a partial run does not overwrite
the full run's files (``--from-json`` writes the report again from a run's JSON). The
workload and one run's figures: bench/README.md, "Gateway". Needs nginx, haproxy, wrk
(Debian); py-spy for ``--profile``; drone (built outside the project) for ``--drone``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from common import (  # bench/common.py, beside this file
    checkout_env,
    free_port,
    serve_cmd,
    stop_all,
    wait_port,
)
from scenarios import haproxy_conf, nginx_conf  # the peers exactly as scenarios.py runs them
from throughput import cpu_seconds, print_profile, rss_mb, run_wrk, start_profile

from rpcbalancer.sim.node import chain_head

RESULTS = Path(__file__).parent / "results"
PEERS = Path(
    os.environ.get("RPCBALANCER_PEERS_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "peers"
)
"""The peers' own sample config files, read where they lie, never copied here (as the tests)."""
TARGETS = ("rpcbalancer-cache", "rpcbalancer", "nginx", "nginx-cache", "haproxy")
NODE = "chain=full,latency=0.08,jitter=0.5,tail_rate=0.01,tail_latency=0.5"
"""A public API node as seen from one region: median 80 ms, p99 about 260 ms, 1% at 500 ms."""
LEAD = 3.0  # seconds between the target's start and the load: first probes everywhere
IRREVERSIBLE_LAG = 15  # the simulator's last irreversible block is the head less 15

# -- the workload --------------------------------------------------------------------------

MIX = (
    ("block", 0.30),
    ("dgp", 0.20),
    ("accounts", 0.15),
    ("content", 0.10),
    ("ranked", 0.10),
    ("version", 0.05),
    ("batch", 0.08),
    ("broadcast", 0.02),
)
"""Share of client requests per kind (see bench/README.md, "Gateway")."""
READS = [(k, w) for k, w in MIX if k not in ("batch", "broadcast")]


class Zipf:
    """Ranks 0..n-1 with P(rank k) proportional to 1 / (k+1)**s."""

    def __init__(self, n: int, s: float) -> None:
        self.cum = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cum, rng.random() * self.cum[-1])


BLOCKS = Zipf(3000, 1.0)  # recency rank below the last irreversible block
ACCOUNTS = Zipf(20_000, 1.1)
POSTS = Zipf(5_000, 1.1)
TAGS = Zipf(100, 1.2)  # rank 0 is the front page (no tag)
BRIDGE_SORTS = (("trending", 0.5), ("hot", 0.3), ("created", 0.2))
CONDENSER_SORTS = (("trending", 0.5), ("created", 0.3), ("hot", 0.2))


def _weighted(rng: random.Random, choices: tuple[tuple[str, float], ...] | list[Any]) -> str:
    roll = rng.random() * sum(w for _, w in choices)
    for name, weight in choices:
        roll -= weight
        if roll < 0:
            return str(name)
    return str(choices[-1][0])


def _tag(rng: random.Random) -> str:
    rank = TAGS.draw(rng)
    return "" if rank == 0 else f"tag{rank}"


@dataclass
class Request:
    kind: str
    body: bytes
    ids: list[str]
    expects: list[tuple[Any, ...]]
    """Per member: (kind, what the answer must hold)."""
    batch: bool = False


def member(
    rng: random.Random, kind: str, ident: str, now: float
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """One JSON-RPC call of a kind, and what its answer must hold."""

    def call(method: str, params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": method, "params": params, "id": ident}

    if kind == "block":
        number = chain_head(now) - IRREVERSIBLE_LAG - BLOCKS.draw(rng)
        return call("condenser_api.get_block", [number]), ("block", number)
    if kind == "dgp":
        return call("condenser_api.get_dynamic_global_properties", []), ("dgp",)
    if kind == "accounts":
        many = 1 if rng.random() < 0.85 else rng.randint(2, 3)
        names = [f"user{ACCOUNTS.draw(rng)}" for _ in range(many)]
        return call("condenser_api.get_accounts", [names]), ("accounts", names)
    if kind == "content":
        rank = POSTS.draw(rng)
        author, permlink = f"user{rank % 997}", f"post-{rank}"
        if rng.random() < 0.5:
            return call("condenser_api.get_content", [author, permlink]), (
                "content",
                author,
                permlink,
            )
        params = {"author": author, "permlink": permlink, "observer": ""}
        return call("bridge.get_post", params), ("content", author, permlink)
    if kind == "ranked":
        tag = _tag(rng)
        if rng.random() < 0.6:
            params = {"sort": _weighted(rng, BRIDGE_SORTS), "tag": tag, "observer": "", "limit": 20}
            return call("bridge.get_ranked_posts", params), ("ranked",)
        method = f"condenser_api.get_discussions_by_{_weighted(rng, CONDENSER_SORTS)}"
        return call(method, [{"tag": tag, "limit": 20}]), ("ranked",)
    if kind == "version":
        return call("condenser_api.get_version", []), ("version",)
    if kind == "broadcast":
        tx = {
            "ref_block_num": rng.randrange(65536),
            "ref_block_prefix": rng.randrange(2**32),
            "expiration": "2030-01-01T00:00:00",
            "operations": [
                [
                    "vote",
                    {
                        "voter": f"user{rng.randrange(20_000)}",
                        "author": "user1",
                        "permlink": f"post-{rng.randrange(5000)}",
                        "weight": 10000,
                    },
                ]
            ],
            "extensions": [],
            "signatures": [f"{rng.getrandbits(256):064x}"],
        }
        return call("condenser_api.broadcast_transaction", [tx]), ("broadcast",)
    raise ValueError(kind)


def request_for(rng: random.Random, i: int, now: float, kinds: Any = MIX) -> Request:
    """The i-th request of the mix (ids are strings starting with ``b-``: the nodes count them)."""
    kind = _weighted(rng, kinds)
    if kind != "batch":
        doc, expect = member(rng, kind, f"b-{i}", now)
        return Request(kind, json.dumps(doc).encode(), [doc["id"]], [expect])
    docs, expects = [], []
    for j in range(rng.randint(2, 5)):
        doc, expect = member(rng, _weighted(rng, READS), f"b-{i}-{j}", now)
        docs.append(doc)
        expects.append(expect)
    return Request("batch", json.dumps(docs).encode(), [d["id"] for d in docs], expects, True)


# -- judging answers -----------------------------------------------------------------------


@dataclass
class Verdict:
    error: bool = False
    stale: bool = False
    wrong: bool = False
    why: str = ""


def judge_result(expect: tuple[Any, ...], result: Any, now: float) -> Verdict:
    kind = expect[0]
    if kind == "block":
        if result is None:
            return Verdict(stale=True, why=f"block {expect[1]} not found")
        block_id = result.get("block_id") if isinstance(result, dict) else None
        if not isinstance(block_id, str) or not block_id.startswith(f"{expect[1]:08x}"):
            return Verdict(wrong=True, why=f"asked block {expect[1]}, got {block_id}")
    elif kind == "dgp":
        head = result.get("head_block_number") if isinstance(result, dict) else None
        if not isinstance(head, int):
            return Verdict(wrong=True, why="dgp without head_block_number")
        if head < chain_head(now) - 10:
            return Verdict(stale=True, why=f"head {head}, {chain_head(now) - head} behind")
    elif kind == "accounts":
        names = [a.get("name") for a in result] if isinstance(result, list) else None
        if names != expect[1]:
            return Verdict(wrong=True, why=f"asked accounts {expect[1]}, got {names}")
    elif kind == "content":
        got = (result.get("author"), result.get("permlink")) if isinstance(result, dict) else None
        if got != expect[1:]:
            return Verdict(wrong=True, why=f"asked post {expect[1:]}, got {got}")
    elif kind == "ranked":
        if not isinstance(result, list) or not result:
            return Verdict(wrong=True, why="ranked posts not a list")
    elif kind == "version" and (not isinstance(result, dict) or "blockchain_version" not in result):
        return Verdict(wrong=True, why="version without blockchain_version")
    return Verdict()


def judge(req: Request, status: int, body: bytes, now: float) -> Verdict:
    """Error (not an answer), stale (old head, a block not found) or wrong (another id, another
    order, another block, account or post) for one HTTP answer."""
    if status != 200:
        return Verdict(error=True, why=f"HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        return Verdict(error=True, why="not JSON")
    members = doc if req.batch else [doc]
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return Verdict(wrong=True, why="not the shape asked for")
    if len(members) != len(req.ids):
        return Verdict(wrong=True, why=f"{len(members)} answers to {len(req.ids)} members")
    verdict = Verdict()
    for ident, expect, answer in zip(req.ids, req.expects, members, strict=True):
        if answer.get("id") != ident:
            return Verdict(wrong=True, why=f"id {answer.get('id')!r} for {ident!r}")
        if "result" not in answer:
            verdict = Verdict(error=True, why=str(answer.get("error"))[:120])
            continue
        one = judge_result(expect, answer["result"], now)
        if one.wrong:
            return one
        if one.stale and not verdict.error:
            verdict = one
    return verdict


# -- the open loop -------------------------------------------------------------------------


async def tagged(nodes: list[str]) -> list[int]:
    """How many of the benchmark's JSON-RPC members each node got (probes are not counted)."""
    counts = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for url in nodes:
            async with session.get(url + "/__stats__") as resp:
                counts.append((await resp.json())["tagged"])
    return counts


def quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan")}
    q = statistics.quantiles(sorted(values), n=1000)
    return {"p50": q[499] * 1000, "p99": q[989] * 1000, "p999": q[998] * 1000}


async def run_load(
    url: str, nodes: list[str], warmup: float, seconds: float, rate: float, seed: int
) -> dict[str, Any]:
    """Open loop at ``rate`` for ``warmup + seconds``; the figures count the last ``seconds``."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {}
    cache_states: dict[str, int] = {}
    examples: list[str] = []
    totals = {"requests": 0, "members": 0, "errors": 0, "stale": 0, "wrong": 0}
    before: list[int] = []
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.2
        first_measured = int(warmup * rate)
        total = first_measured + int(seconds * rate)

        async def one(i: int, due: float, req: Request, measured: bool) -> None:
            headers = {"content-type": "application/json"}
            try:
                async with session.post(
                    url, data=req.body, timeout=aiohttp.ClientTimeout(total=5), headers=headers
                ) as resp:
                    body, status = await resp.read(), resp.status
                    state = resp.headers.get("x-cache") or resp.headers.get("x-cache-status") or "-"
                verdict = judge(req, status, body, time.time())
            except (aiohttp.ClientError, TimeoutError) as exc:
                verdict, state = Verdict(error=True, why=type(exc).__name__), "-"
            if not measured:
                return
            took = loop.time() - due
            latencies.append(took)
            by_kind.setdefault(req.kind, []).append(took)
            key = f"{req.kind}:{state.lower()}"
            cache_states[key] = cache_states.get(key, 0) + 1
            totals["errors"] += verdict.error
            totals["stale"] += verdict.stale
            totals["wrong"] += verdict.wrong
            if verdict.why and len(examples) < 20:
                examples.append(f"{req.kind}: {verdict.why}")

        async def snapshot() -> None:
            before.extend(await tagged(nodes))

        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == first_measured:
                tasks.append(asyncio.create_task(snapshot()))
            req = request_for(rng, i, time.time())
            measured = i >= first_measured
            if measured:
                totals["requests"] += 1
                totals["members"] += len(req.ids)
            tasks.append(asyncio.create_task(one(i, due, req, measured)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    await asyncio.sleep(0.5)
    after = await tagged(nodes)
    upstream = sum(after) - sum(before)
    return {
        **totals,
        **quantiles(latencies),
        "max": max(latencies) * 1000,
        "over_1s": sum(1 for x in latencies if x > 1.0),
        "upstream": upstream,
        "upstream_ratio": upstream / max(1, totals["members"]),
        "per_node": [a - b for a, b in zip(after, before, strict=True)],
        "p50_by_kind": {k: round(quantiles(v)["p50"], 2) for k, v in sorted(by_kind.items())},
        "cache_states": dict(sorted(cache_states.items())),
        "examples": examples,
    }


# -- one connection, one request at a time: latency without queueing ----------------------


def post_raw(sock: socket.socket, body: bytes) -> tuple[int, bytes, bytes]:
    """One POST on a keep-alive connection; (status, header block, body)."""
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return int(head[9:12]), head, rest


def one_connection(port: int, requests: int, seconds: float) -> dict[str, Any]:
    """The hot block asked again and again on one connection (a new id each time), bounded in
    count and time; (re)connects when the server closes (nginx: 1,000 requests a connection)."""
    hits: list[float] = []
    others: list[float] = []
    deadline = time.monotonic() + seconds
    sock: socket.socket | None = None
    try:
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            body = b'{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[%d],"id":"b-%d"}'
            started = time.perf_counter()
            try:
                _, head, _ = post_raw(sock, body % (HOT_BLOCK, i))
            except ConnectionError:
                sock.close()
                sock = None
                continue
            took = time.perf_counter() - started
            (hits if re.search(rb"(?i)\r\nx-cache: hit", head) else others).append(took)
            if re.search(rb"(?i)\r\nconnection: close", head):
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
    return {
        "hits": len(hits),
        "others": len(others),
        "hit": quantiles(hits),
        "other": quantiles(others),
    }


def closed_loop(port: int, requests: int, seconds: float, seed: int) -> dict[str, Any]:
    """Single reads of the mix, one at a time on one connection, bounded in count and time:
    200 distinct reads drawn from the mix, asked in turn again and again (each time with a new
    id), so that after the first round most are answered from the cache. The latency of the
    answers served from the cache (``X-Cache: hit``) and of the others."""
    rng = random.Random(seed)
    pool = [request_for(rng, 0, time.time(), READS) for _ in range(200)]
    hits: list[float] = []
    others: list[float] = []
    wrong = 0
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            base = pool[i % len(pool)]
            doc = json.loads(base.body)
            doc["id"] = f"b-c{i}"
            req = Request(base.kind, json.dumps(doc).encode(), [doc["id"]], base.expects)
            started = time.perf_counter()
            status, head, body = post_raw(sock, req.body)
            took = time.perf_counter() - started
            verdict = judge(req, status, body, time.time())
            wrong += verdict.wrong or verdict.stale
            (hits if re.search(rb"(?i)\r\nx-cache: hit", head) else others).append(took)
    return {
        "hits": len(hits),
        "others": len(others),
        "wrong_or_stale": wrong,
        "hit": quantiles(hits),
        "other": quantiles(others),
    }


# -- the targets ---------------------------------------------------------------------------


def nginx_cache_conf(tmp: Path, port: int, nodes: list[str]) -> Path:
    """scenarios.py's nginx, plus proxy_cache on POST keyed by the request body (1 s)."""
    path = nginx_conf(tmp, port, nodes)
    text = path.read_text()
    upstream, location = "  upstream nodes {", "    location / { "
    assert upstream in text and location in text, "scenarios.nginx_conf changed its shape"
    text = text.replace(
        upstream,
        f"  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=rpc:16m max_size=256m"
        " inactive=10s use_temp_path=off;\n" + upstream,
    ).replace(
        location,
        location + 'proxy_cache rpc; proxy_cache_methods POST; proxy_cache_key "$request_body";\n'
        "      proxy_cache_valid 200 1s; proxy_cache_lock on; proxy_cache_lock_timeout 2s;\n"
        "      proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;\n"
        "      client_body_buffer_size 1m; client_body_in_single_buffer on;\n"
        "      client_max_body_size 1m; add_header X-Cache-Status $upstream_cache_status always;\n      ",
    )
    path.write_text(text)
    return path


def rpcbalancer_conf(tmp: Path, name: str, nodes: list[str], **extra: Any) -> Path:
    config = {
        "nodes": nodes,
        "strategy": "fastest",
        "store": "none",
        "log_level": "warning",
        # Like nginx and HAProxy here (access_log off).
        "access_log": {"enabled": False},
        **extra,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def start_target(name: str, tmp: Path, port: int, nodes: list[str]) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", "1"]
    if name == "rpcbalancer-cache":
        cmd = serve_cmd(rpcbalancer_conf(tmp, name, nodes, cache={"enabled": True}), port)
    elif name == "rpcbalancer":  # said, not left to the default (which may turn it on)
        cmd = serve_cmd(rpcbalancer_conf(tmp, name, nodes, cache={"enabled": False}), port)
    elif name == "nginx":
        cmd = ["nginx", "-c", str(nginx_conf(tmp, port, nodes)), "-p", str(tmp)]
    elif name == "nginx-cache":
        cmd = ["nginx", "-c", str(nginx_cache_conf(tmp, port, nodes)), "-p", str(tmp)]
    elif name == "haproxy":
        cmd = ["haproxy", "-f", str(haproxy_conf(tmp, port, nodes))]
    else:
        raise ValueError(name)
    return subprocess.Popen(pin + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def status_json(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as resp:
        doc = json.loads(resp.read())
    return {**doc["balancer"], "nodes": doc["nodes"]}  # type: ignore[no-any-return]


def run_target(name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"rpcb-gateway-{name}-"))
    tmp.chmod(0o755)  # nginx's workers (nobody, when run as root) write proxy_cache's files here
    procs: list[subprocess.Popen[bytes]] = []
    try:
        node_args = [arg for n in ("n1", "n2", "n3") for arg in ("--node", f"{n}:{NODE}")]
        fleet = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "rpcbalancer.sim", *node_args],
            stdout=subprocess.PIPE,
        )
        procs.append(fleet)
        assert fleet.stdout is not None
        urls = list(json.loads(fleet.stdout.readline()).values())
        port = free_port()
        procs.append(start_target(name, tmp, port, urls))
        wait_port(port)
        time.sleep(LEAD)
        url = f"http://127.0.0.1:{port}/"
        result = asyncio.run(run_load(url, urls, args.warmup, args.seconds, args.rate, seed))
        if name.startswith("rpcbalancer"):
            status = status_json(port)  # before the closed loop: the open loop's own figures
            result["balancer"] = {
                k: status.get(k) for k in ("requests", "hedges", "retries", "cache")
            }
        if name == "rpcbalancer-cache":
            result["closed_loop"] = closed_loop(port, args.closed_requests, 30.0, seed + 1)
        return result
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


# -- instant nodes, wrk --------------------------------------------------------------------

HOT_BLOCK = 1_000_000
GET_BODY = '{"status":"OK","jussi_num":100000000}'
HIT_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"head_block_number":100000000,'
    '"time":"2030-01-01T00:00:00","last_irreversible_block_num":99999980,'
    f'"blockchain_version":"0.23.1","block_id":"{HOT_BLOCK:08x}{"0" * 32}",'
    f'"previous":"{HOT_BLOCK - 1:08x}{"0" * 32}","witness":"w","transactions":[]}}}}'
)
"""One answer for every POST: a dynamic global properties answer (for the probes) that is
also the block asked for by the hit-path test (its block_id)."""
FILL_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"head_block_number":100000000,'
    '"time":"2030-01-01T00:00:00","last_irreversible_block_num":99999980,'
    '"blockchain_version":"0.23.1","witness":"w","transactions":[]}}'
)
"""For the memory test: without a block_id, any block below the irreversible one is kept."""
HIT_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[HOT],"id":"b-' .. n .. '"}')
end
""".replace("HOT", str(HOT_BLOCK))
FILL_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local r = math.random()
  local call
  if r < 0.6 then
    call = '"condenser_api.get_block","params":[' .. math.random(1, 20000000) .. ']'
  elseif r < 0.9 then
    call = '"condenser_api.get_accounts","params":[["user' .. math.random(1, 2000000) .. '"]]'
  else
    call = '"condenser_api.get_block","params":[HOT]'
  end
  return wrk.format(nil, nil, nil, '{"jsonrpc":"2.0","method":' .. call .. ',"id":"b-' .. n .. '"}')
end
""".replace("HOT", str(HOT_BLOCK))


def instant_nodes(tmp: Path, body: str, name: str) -> tuple[list[str], list[str]]:
    """(command, node URLs) of one nginx with three server blocks answering ``body``."""
    ports = [free_port() for _ in range(3)]
    servers = "\n".join(
        f"""  server {{ listen 127.0.0.1:{p}; access_log off;
    location / {{ default_type application/json;
      if ($request_method = POST) {{ return 200 '{body}'; }}
      return 200 '{GET_BODY}'; }} }}"""
        for p in ports
    )
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"pid {tmp}/{name}.pid; error_log {tmp}/{name}.err; daemon off; worker_processes 1;\n"
        f"events {{ worker_connections 4096; }}\nhttp {{\n{servers}\n}}\n"
    )
    return ["nginx", "-c", str(conf), "-p", str(tmp)], [f"http://127.0.0.1:{p}" for p in ports]


def proxy_conf(tmp: Path, port: int, nodes: list[str]) -> Path:
    """nginx proxying to instant nodes, as throughput.py."""
    upstream = "\n".join(f"    server {u.removeprefix('http://')};" for u in nodes)
    path = tmp / "proxy.conf"
    path.write_text(
        f"pid {tmp}/proxy.pid; error_log {tmp}/proxy.err; daemon off; worker_processes 1;\n"
        f"events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n"
        f"  upstream nodes {{\n{upstream}\n    keepalive 128;\n  }}\n"
        f"  server {{ listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://nodes; "
        'proxy_http_version 1.1;\n      proxy_set_header Connection ""; '
        "proxy_next_upstream error timeout http_503; } }\n}\n"
    )
    return path


def one_post(port: int, body: bytes) -> tuple[int, bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return post_raw(sock, body)


HOT_REQUEST = b'{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[%d],"id":"b-%d"}'
UNIQUE_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[' .. n .. '],"id":"b-' .. n .. '"}')
end
"""
"""drone-miss: a new block each request (the instant nodes answer block HOT_BLOCK whatever is
asked; drone, told NO_CACHE, does not look), so that no two requests are the same call: drone
shares one upstream call among identical calls in flight, cache or not, and 50 connections
asking one block would measure that sharing, not its forwarding. rpcbalancer without the
cache does not coalesce, so ``miss`` keeps HIT_LUA."""
DRONE_GET_BLOCK = "appbase.condenser_api.get_block"
"""condenser_api.get_block as drone names it in its TTLs (EXPIRE_IF_REVERSIBLE in its example)."""
BASE = "@base"
"""The suffix of the targets run from ``--src``."""


# -- drone, Hive's gateway, as a peer ------------------------------------------------------


def drone_template(binary: Path, given: Path | None) -> Path | None:
    """drone's own example config: ``--drone-config``, else the copy in ../shared/peers, else
    the one in the checkout BIN was built in (BIN = <checkout>/target/release/drone)."""
    if given is not None:
        return given if given.is_file() else None
    candidates = [PEERS / "drone-config.example.yaml"]
    if len(binary.resolve().parents) > 2:
        candidates.append(binary.resolve().parents[2] / "config.example.yaml")
    return next((c for c in candidates if c.is_file()), None)


def drone_conf(template: str, port: int, nodes: list[str], no_cache: tuple[str, ...] = ()) -> str:
    """drone's example config, line by line, with its listener on 127.0.0.1:``port``, every
    backend at one of ``nodes`` in turn (drone sends a backend's calls to its one URL), and the
    TTLs named in ``no_cache`` set to NO_CACHE; every other line (TTLs, timeouts, routes, cache
    size, metrics) as the example has it. Checked by reading the result back."""
    out: list[str] = []
    section = ""
    backends = 0
    seen: set[str] = set()
    for line in template.splitlines():
        top = re.match(r"([A-Za-z_][\w-]*):", line)
        if top:
            section = top.group(1)
        item = re.match(r"(\s+)([\w.-]+):", line)  # comments (``  # x: 1``) do not match
        if item and section == "drone" and item.group(2) in ("port", "hostname"):
            key = item.group(2)
            line = f"{item.group(1)}{key}: {port if key == 'port' else '127.0.0.1'}"
            seen.add(key)
        elif item and section == "backends":
            line = f"{item.group(1)}{item.group(2)}: {nodes[backends % len(nodes)]}"
            backends += 1
        elif item and section == "ttls" and item.group(2) in no_cache:
            line = f"{item.group(1)}{item.group(2)}: NO_CACHE"
            seen.add(item.group(2))
        out.append(line)
    text = "\n".join(out) + "\n"
    doc = yaml.safe_load(text)
    ok = (
        doc["drone"]["port"] == port
        and doc["drone"]["hostname"] == "127.0.0.1"
        and backends == len(doc["backends"]) > 0
        and set(doc["backends"].values()) <= set(nodes)
        and all(doc["ttls"].get(key) == "NO_CACHE" for key in no_cache)
        and seen >= {"port", "hostname", *no_cache}
    )
    if not ok:
        raise RuntimeError("drone's example config changed its shape: port, hostname, backends?")
    return text


def drone_counts(port: int, metrics: str = "/metrics", space: str = "drone") -> dict[str, float]:
    """drone's own counts (its Prometheus endpoint) of condenser_api.get_block: answers, and
    answers it counts as cached (a hit, or a share of another identical call's upstream call);
    and the last irreversible block it knows (from get_dynamic_global_properties answers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{metrics}", timeout=5) as resp:
        text = resp.read().decode()
    counts = {"answers": 0.0, "cached": 0.0, "lib": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(f"{space}_blockchain_lib"):
            counts["lib"] = float(value)
        elif 'method="get_block"' not in name:
            continue
        elif name.startswith(f"{space}_requests_total{{"):
            counts["answers"] += float(value)
        elif name.startswith(f"{space}_requests_cached_total{{"):
            counts["cached"] += float(value)
    return counts


def drone_skipped(args: argparse.Namespace) -> tuple[Path | None, Path | None, str]:
    """(binary, example config, "") when the drone targets can run, else the reason they
    cannot (they are skipped, as the tests skip a peer that is not installed)."""
    if args.drone is None:
        return None, None, "no --drone BIN given"
    binary = Path(args.drone)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return (
            None,
            None,
            f"{binary} is not an executable file (drone is built outside the project)",
        )
    template = drone_template(binary, Path(args.drone_config) if args.drone_config else None)
    if template is None:
        where = args.drone_config or f"{PEERS}/drone-config.example.yaml, or beside BIN's source"
        return None, None, f"no drone example config ({where})"
    return binary, template, ""


# -- rpcbalancer from another checkout ----------------------------------------------------


def imported_from(env: dict[str, str], cwd: Path) -> str:
    """Where ``import rpcbalancer`` finds the package with this environment, in a subprocess
    started as the targets are (this Python, this working directory)."""
    out = subprocess.run(
        [sys.executable, "-c", "import rpcbalancer; print(rpcbalancer.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def from_cache(name: str, port: int, drone: dict[str, Any]) -> tuple[float, float] | None:
    """(answers, answers from the cache or shared with another call) so far, as the target
    counts them: rpcbalancer's /status.json, drone's metrics; None where it has no count."""
    try:
        if name.startswith("drone-"):
            c = drone_counts(port, **drone)
            return c["answers"], c["cached"]
        if name.partition("@")[0] in ("hit", "miss"):
            cache = status_json(port).get("cache") or {}
            asked = sum(cache.get(k) or 0 for k in ("hit", "miss", "coalesced"))
            return asked, (cache.get("hit") or 0) + (cache.get("coalesced") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def paired_order(names: list[str], run: int) -> list[str]:
    """The targets in turn, each ``X`` beside its ``X@base``; every other repeat the twins swap
    places, so that neither always goes first."""
    order = list(names)
    if run % 2:
        for name in ("hit", "miss"):
            if name + BASE in order:
                i, j = order.index(name), order.index(name + BASE)
                order[i], order[j] = order[j], order[i]
    return order


def hitpath(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rpcb-gateway-hit-"))
    procs: list[subprocess.Popen[bytes]] = []
    lua = tmp / "hit.lua"
    lua.write_text(HIT_LUA)
    unique_lua = tmp / "unique.lua"
    unique_lua.write_text(UNIQUE_LUA)
    results: dict[str, Any] = {"runs": [], "skipped": {}, "imported": {}, "drone": None}
    try:
        cmd, nodes = instant_nodes(tmp, HIT_BODY, "nodes")
        procs.append(subprocess.Popen(["taskset", "-c", "0", *cmd]))
        for url in nodes:
            wait_port(int(url.rsplit(":", 1)[1]))
        loose = {"max_head_age": 10**9, "probe": {"interval": 5}}
        # The cache said on and off, not left to the default (which may change): both builds
        # read these files.
        configs = {
            "hit": rpcbalancer_conf(tmp, "hit", nodes, cache={"enabled": True}, **loose),
            "miss": rpcbalancer_conf(tmp, "miss", nodes, cache={"enabled": False}, **loose),
        }
        names = ["nginx-proxy", "hit", "miss"]
        other = Path(args.src).resolve() if args.src else None
        envs = {"": checkout_env(None)}
        if other is not None:
            names = ["nginx-proxy", "hit", "hit" + BASE, "miss", "miss" + BASE]
            envs[BASE] = checkout_env(other)
        for label, env in envs.items():
            results["imported"][label or "this checkout"] = imported_from(env, tmp)
            print(
                f"hitpath: rpcbalancer{label or ' (this checkout)'} imports "
                f"{results['imported'][label or 'this checkout']}",
                flush=True,
            )
        if other is not None:
            base_file = Path(results["imported"][BASE])
            if not base_file.is_relative_to(other / "src"):
                raise RuntimeError(f"PYTHONPATH={other}/src imports {base_file}, not {other}/src's")
            if base_file == Path(results["imported"]["this checkout"]):
                raise RuntimeError(f"--src {other} is this checkout")
        binary, template, why = drone_skipped(args)
        drone_meta: dict[str, Any] = {}
        if binary is None:
            for name in ("drone-hit", "drone-miss"):
                results["skipped"][name] = why
            print(f"hitpath: drone-hit, drone-miss skipped: {why}", flush=True)
        else:
            names += ["drone-hit", "drone-miss"]
        ports = {name: free_port() for name in names}
        targets: dict[str, subprocess.Popen[bytes]] = {}
        logs: dict[str, Path] = {}
        for name in names:
            port, cwd, env = ports[name], tmp, envs[""]
            if name == "nginx-proxy":
                cmd = ["nginx", "-c", str(proxy_conf(tmp, port, nodes)), "-p", str(tmp)]
            elif name.startswith("drone-"):
                assert binary is not None and template is not None
                cwd = tmp / name  # drone reads ./config.yaml (and ./config.local.yaml: none here)
                cwd.mkdir()
                no_cache = (DRONE_GET_BLOCK,) if name == "drone-miss" else ()
                text = drone_conf(template.read_text(), port, nodes, no_cache)
                (cwd / "config.yaml").write_text(text)
                doc = yaml.safe_load(text)["drone"]
                drone_meta = {
                    "metrics": doc.get("metrics_path", "/metrics"),
                    "space": doc.get("metrics_namespace", "drone"),
                }
                env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}  # errors only
                cmd = [str(binary)]
                if results["drone"] is None:
                    results["drone"] = {"binary": str(binary), "template": str(template)}
                results["drone"][f"{name} config"] = text
            else:
                kind, at, _ = name.partition("@")
                env = envs[BASE if at else ""]
                cmd = serve_cmd(configs[kind], port)
            logs[name] = tmp / f"{name}.log"
            with logs[name].open("wb") as log:
                targets[name] = subprocess.Popen(
                    ["taskset", "-c", "1", *cmd],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            procs.append(targets[name])
        for name, port in ports.items():
            try:
                wait_port(port)
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}\n{log_tail(logs[name])}") from None
        time.sleep(1.5)
        for name in names:  # the warming requests: once the node's irreversible is known
            if name.partition("@")[0] == "hit":
                for _ in range(20):
                    one_post(ports[name], HOT_REQUEST % (HOT_BLOCK, 0))
                    _, head, _ = one_post(ports[name], HOT_REQUEST % (HOT_BLOCK, 0))
                    if re.search(rb"(?i)\r\nx-cache: hit", head):
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError(f"{name}: no cache hit after 20 warming requests")
            elif name == "drone-hit":
                # drone learns the last irreversible block from the answers to
                # get_dynamic_global_properties that pass through it (until then every block
                # counts as reversible: kept 9 s); then it keeps block HOT_BLOCK for good.
                dgp = b'{"jsonrpc":"2.0","method":"condenser_api.get_dynamic_global_properties",'
                one_post(ports[name], dgp + b'"params":[],"id":"w-0"}')
                for _ in range(20):
                    one_post(ports[name], HOT_REQUEST % (HOT_BLOCK, 0))
                    was = drone_counts(ports[name], **drone_meta)
                    one_post(ports[name], HOT_REQUEST % (HOT_BLOCK, 0))
                    now = drone_counts(ports[name], **drone_meta)
                    if now["cached"] > was["cached"] and now["lib"] >= HOT_BLOCK:
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError("drone-hit: no cache hit after 20 warming requests")
            # Every target answers the block asked for, through to the node.
            status, _, body = one_post(ports[name], HOT_REQUEST % (HOT_BLOCK, 1))
            result = json.loads(body).get("result") if status == 200 else None
            if not isinstance(result, dict) or not str(result.get("block_id")).startswith(
                f"{HOT_BLOCK:08x}"
            ):
                raise RuntimeError(f"{name}: HTTP {status}, {body[:300]!r}")
        node_port = int(nodes[0].rsplit(":", 1)[1])
        for run in range(args.repeat):
            row: dict[str, Any] = {}
            # The floor: one instant node (CPU 0, beside wrk) with one connection.
            floor = run_wrk(nodes[0] + "/", min(args.wrk_seconds, 5.0), 1, lua)
            row["node"] = {
                "rps_alone": floor["rps"],
                "p50_alone": floor["p50"],
                "p99_alone": floor["p99"],
            }
            print(
                f"hitpath #{run + 1} {'node':<13} (1 conn) {floor['rps']:>8.0f} req/s  "
                f"1-conn p50 {floor['p50']:.3f} p99 {floor['p99']:.3f} ms",
                flush=True,
            )
            for name in paired_order(names, run):
                port = ports[name]
                url = f"http://127.0.0.1:{port}/"
                script = unique_lua if name == "drone-miss" else lua
                run_wrk(url, 2, args.connections, script)  # warm-up
                pid = targets[name].pid
                counted = from_cache(name, port, drone_meta)
                before = cpu_seconds([pid])
                spy = None
                if args.profile and name == "hit" and run == 0:
                    spy = start_profile(pid, args.wrk_seconds, tmp / "profile.txt")
                r = run_wrk(url, args.wrk_seconds, args.connections, script)
                if spy is not None:
                    spy.wait(timeout=60)
                    print_profile(tmp / "profile.txt")
                r["cpu_us_per_req"] = (cpu_seconds([pid]) - before) / max(1, r["requests"]) * 1e6
                after = from_cache(name, port, drone_meta)
                if counted is not None and after is not None and after[0] > counted[0]:
                    r["from_cache"] = (after[1] - counted[1]) / (after[0] - counted[0])
                alone = run_wrk(url, min(args.wrk_seconds, 5.0), 1, script)
                r["p50_alone"], r["p99_alone"] = alone["p50"], alone["p99"]
                r["added_p50_alone"] = alone["p50"] - floor["p50"]
                row[name] = r
                share = f"  from cache {100 * r['from_cache']:.1f}%" if "from_cache" in r else ""
                print(
                    f"hitpath #{run + 1} {name:<13} {r['rps']:>8.0f} req/s  p50 {r['p50']:.2f} ms"
                    f"  p99 {r['p99']:.2f} ms  CPU {r['cpu_us_per_req']:.1f} us/req  errors "
                    f"{int(r['errors'])}  1-conn p50 {r['p50_alone']:.3f} p99 {r['p99_alone']:.3f}"
                    f" ms (added p50 {r['added_p50_alone']:+.3f}){share}",
                    flush=True,
                )
            row.update(hit_ratios(row))
            print(
                f"hitpath #{run + 1}: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in row.items() if isinstance(v, float)),
                flush=True,
            )
            results["runs"].append(row)
        if args.latency_rounds:
            results["added_latency"] = added_latency(args, ports, node_port, lua, unique_lua)
        # Latency without queueing, one request at a time: a cache hit, and the floor (the
        # same client against one instant node: loopback and this client's own cost).
        results["one_connection"] = {
            name: one_connection(ports[name], args.closed_requests * 5, 30.0)
            for name in names
            if name.partition("@")[0] == "hit"
        }
        results["one_connection"]["floor (instant node, CPU 0)"] = one_connection(
            node_port, args.closed_requests * 5, 30.0
        )
        for name, r in results["one_connection"].items():
            q = r["hit"] if name.partition("@")[0] == "hit" else r["other"]
            print(
                f"hitpath one connection, {name}: p50 {q['p50']:.3f} p99 {q['p99']:.3f} p99.9 "
                f"{q['p999']:.3f} ms ({r['hits']} hits, {r['others']} others)",
                flush=True,
            )
        results["cache"] = status_json(ports["hit"]).get("cache")
        if "hit" + BASE in ports:
            results["cache" + BASE] = status_json(ports["hit" + BASE]).get("cache")
        return results
    finally:
        stop_all(procs, grace=15)
        shutil.rmtree(tmp, ignore_errors=True)


def added_latency(
    args: argparse.Namespace, ports: dict[str, int], node_port: int, lua: Path, unique: Path
) -> dict[str, Any]:
    """What each target adds to a request that is not queued: wrk with one connection, 2 s
    per target, the targets in turn (and the instant node beside them), ``--latency-rounds``
    rounds in a rotating order; the median over rounds of each p50, less the node's. Many
    short turns rather than one long one per target: this machine's speed drifts, and a
    drift then spreads over every target alike."""
    names = ["node", *ports]
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.latency_rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            port = node_port if name == "node" else ports[name]
            script = unique if name == "drone-miss" else lua
            p50s[name].append(run_wrk(f"http://127.0.0.1:{port}/", 2.0, 1, script)["p50"])
    floor = statistics.median(p50s["node"])
    out: dict[str, Any] = {}
    for name, values in p50s.items():
        median = statistics.median(values)
        out[name] = {"p50s": values, "median_p50": median, "added_p50": median - floor}
        print(
            f"hitpath added latency, {name:<13} median p50 {median:.3f} ms over "
            f"{len(values)} rounds (added {median - floor:+.3f} ms)",
            flush=True,
        )
    return out


def hit_ratios(row: dict[str, Any]) -> dict[str, float]:
    """Requests per second of every target over nginx proxying's, and of each pair."""
    ratios: dict[str, float] = {}
    names = [n for n, r in row.items() if isinstance(r, dict) and "rps" in r]
    for name in names:
        if name != "nginx-proxy" and "nginx-proxy" in row:
            ratios[f"{name}/nginx-proxy"] = row[name]["rps"] / row["nginx-proxy"]["rps"]
    for a, b in (
        ("hit", "miss"),
        ("hit", "hit" + BASE),
        ("miss", "miss" + BASE),
        ("hit" + BASE, "miss" + BASE),
        ("drone-hit", "drone-miss"),
        ("hit", "drone-hit"),
        ("miss", "drone-miss"),
    ):
        if a in names and b in names:
            ratios[f"{a}/{b}"] = row[a]["rps"] / row[b]["rps"]
    return ratios


def memory(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rpcb-gateway-mem-"))
    procs: list[subprocess.Popen[bytes]] = []
    lua = tmp / "fill.lua"
    lua.write_text(FILL_LUA)
    max_bytes = args.max_mib * 1024 * 1024
    try:
        cmd, nodes = instant_nodes(tmp, FILL_BODY, "nodes")
        procs.append(subprocess.Popen(["taskset", "-c", "0", *cmd]))
        for url in nodes:
            wait_port(int(url.rsplit(":", 1)[1]))
        port = free_port()
        config = rpcbalancer_conf(
            tmp,
            "mem",
            nodes,
            cache={"enabled": True, "max_bytes": max_bytes},
            max_head_age=10**9,
            probe={"interval": 5},
        )
        proc = subprocess.Popen(
            ["taskset", "-c", "1", *serve_cmd(config, port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_port(port)
        time.sleep(1.5)
        start_rss = rss_mb([proc.pid])
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        began = time.monotonic()

        def sample() -> None:
            while not stop.wait(15.0):
                samples.append((time.monotonic() - began, rss_mb([proc.pid])))
                print(f"memory: {samples[-1][0]:.0f}s RSS {samples[-1][1]:.1f} MB", flush=True)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        r = run_wrk(f"http://127.0.0.1:{port}/", args.minutes * 60, args.connections, lua)
        stop.set()
        sampler.join()
        end_rss = rss_mb([proc.pid])
        cache = status_json(port).get("cache") or {}
        limit = max_bytes / 2**20 + 30
        return {
            "minutes": args.minutes,
            "max_mib": args.max_mib,
            "requests": r["requests"],
            "rps": r["rps"],
            "errors": r["errors"],
            "rss_start_mb": start_rss,
            "rss_end_mb": end_rss,
            "rss_peak_mb": max([end_rss, *(s for _, s in samples)]),
            "samples": samples,
            "cache": cache,
            "limit_mb": limit,
            # What one cached answer costs in RSS, against what the cache counts for it.
            "rss_per_item": (end_rss - start_rss) * 2**20 / max(1, cache.get("items") or 1),
            "counted_per_item": (cache.get("bytes") or 0) / max(1, cache.get("items") or 1),
        }
    finally:
        stop_all(procs, grace=15)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str = "") -> None:
        self.lines.append(text)
        print(text, flush=True)


def side_table(report: Report, runs: list[dict[str, dict[str, Any]]]) -> None:
    report.add(
        "| run | target | p50 ms | p99 ms | p99.9 ms | over 1 s | errors | stale | wrong "
        "| upstream/client |"
    )
    report.add("|---|---|---|---|---|---|---|---|---|---|")
    for n, run in enumerate(runs, 1):
        for name, r in run.items():
            report.add(
                f"| {n} | {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | "
                f"{r['over_1s']} | {r['errors']} | {r['stale']} | {r['wrong']} | "
                f"{r['upstream_ratio']:.2f} |"
            )


def verdicts(
    report: Report,
    runs: list[dict[str, dict[str, Any]]],
    hit: dict[str, Any] | None,
    mem: dict[str, Any] | None,
) -> None:
    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    report.add("Targets (floors from the issue), per run:")
    report.add()
    for n, run in enumerate(runs, 1):
        ours = run.get("rpcbalancer-cache")
        if ours is None:
            continue
        ratio = ours["upstream_ratio"]
        peers = ", ".join(
            f"{k} {v['upstream_ratio']:.2f}" for k, v in run.items() if k != "rpcbalancer-cache"
        )
        report.add(
            f"- run {n}: upstream requests per client request {ratio:.3f} (floor 0.40; {peers}): "
            + met(ratio <= 0.40)
        )
        if "nginx" in run:
            p = ours["p50"] / run["nginx"]["p50"]
            report.add(
                f"- run {n}: p50 {ours['p50']:.2f} ms = {p:.3f}x nginx's {run['nginx']['p50']:.1f} ms "
                f"(floor 0.25x): " + met(p <= 0.25)
            )
        loop = ours.get("closed_loop")
        if loop:
            report.add(
                f"- run {n}: cache hits, one connection (no queueing), p99 {loop['hit']['p99']:.3f} ms "
                f"(p50 {loop['hit']['p50']:.3f}, p99.9 {loop['hit']['p999']:.3f}; {loop['hits']} hits "
                f"of {loop['hits'] + loop['others']}; floor 1 ms): "
                + met(loop["hit"]["p99"] <= 1.0)
            )
        bad = ours["stale"] + ours["wrong"]
        report.add(
            f"- run {n}: stale {ours['stale']}, wrong {ours['wrong']} of {ours['requests']} "
            f"(floor 0 and 0): " + met(bad == 0)
        )
    if hit:
        for n, row in enumerate(hit["runs"], 1):
            a, b = row["hit/nginx-proxy"], row["hit/miss"]
            report.add(
                f"- hit path, wrk run {n}: {row['hit']['rps']:,.0f} req/s = {a:.2f}x nginx proxying "
                f"({row['nginx-proxy']['rps']:,.0f}; floor 0.8x): {met(a >= 0.8)}; {b:.2f}x our miss "
                f"path ({row['miss']['rps']:,.0f}; floor 3x): {met(b >= 3)}"
            )
    if hit and "one_connection" in hit:
        h = hit["one_connection"]["hit"]["hit"]
        report.add(
            f"- hit path, one connection (no queueing, instant nodes): cache hits p99 {h['p99']:.3f} ms "
            f"({hit['one_connection']['hit']['hits']} hits; floor 1 ms): " + met(h["p99"] <= 1.0)
        )
    if mem:
        report.add(
            f"- memory: RSS {mem['rss_end_mb']:.1f} MB after {mem['minutes']:g} min at full load "
            f"(peak {mem['rss_peak_mb']:.1f}, at start {mem['rss_start_mb']:.1f}) against "
            f"max_bytes + 30 MB = {mem['limit_mb']:.0f} MB: "
            + met(mem["rss_end_mb"] <= mem["limit_mb"])
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per target")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds first")
    parser.add_argument("--rate", type=float, default=200.0, help="client requests per second")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every target, interleaved")
    parser.add_argument(
        "--only", help=f"comma-separated targets of the side run ({','.join(TARGETS)})"
    )
    parser.add_argument("--phases", default="side,hitpath,memory")
    parser.add_argument("--closed-requests", type=int, default=4000)
    parser.add_argument("--wrk-seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=0,
        help="hitpath: rounds of 2 s one-connection turns per target, for the added latency",
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=5.0, help="of the memory test")
    parser.add_argument(
        "--max-mib", type=int, default=32, help="cache.max_bytes of the memory test"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy on the hit path")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--src",
        help="hitpath: also run rpcbalancer from this checkout (DIR/src) as hit@base, miss@base",
    )
    parser.add_argument(
        "--drone", help="hitpath: also run this drone binary (built outside the project)"
    )
    parser.add_argument(
        "--drone-config",
        help="drone's example config to derive from (default: ../shared/peers/"
        "drone-config.example.yaml, else config.example.yaml of BIN's checkout)",
    )
    parser.add_argument(
        "--out",
        help="results as STEM.md and STEM.json (a bare name: in bench/results/); default gateway "
        "for the three phases, gateway-<phases> for fewer, the JSON's own name with --from-json",
    )
    parser.add_argument("--from-json", type=Path, help="write the report again from this JSON")
    args = parser.parse_args()
    if args.src and not (Path(args.src) / "src" / "rpcbalancer" / "__init__.py").is_file():
        sys.exit(f"--src {args.src}: no src/rpcbalancer there")
    for tool in ("wrk", "nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light haproxy util-linux)")
    os.sched_setaffinity(0, {0})  # the load beside the nodes; targets take CPU 1
    phases = set(args.phases.split(","))
    targets = [t for t in TARGETS if not args.only or t in args.only.split(",")]
    RESULTS.mkdir(exist_ok=True)
    if args.from_json:  # the report again from a run's results (no load)
        stem = out_stem(args.out or str(args.from_json.with_suffix("")))
        saved = json.loads(args.from_json.read_text())
        args = argparse.Namespace(**{**vars(args), **saved["args"], "from_json": None})
        write_report(args, saved["side"], saved["hitpath"], saved["memory"], stem)
        return
    everything = {"side", "hitpath", "memory"} <= phases
    stem = out_stem(
        args.out
        or (
            "gateway"
            if everything
            else "gateway-" + "-".join(p for p in ("side", "hitpath", "memory") if p in phases)
        )
    )
    runs: list[dict[str, dict[str, Any]]] = []
    hit = mem = None
    if "side" in phases:
        for run in range(args.repeat):
            row: dict[str, dict[str, Any]] = {}
            for name in targets:
                r = run_target(name, args, args.seed + run)
                row[name] = r
                print(
                    f"side #{run + 1} {name:<17} p50 {r['p50']:7.1f}  p99 {r['p99']:7.1f}  p99.9 "
                    f"{r['p999']:7.1f} ms  errors {r['errors']}  stale {r['stale']}  wrong "
                    f"{r['wrong']}  upstream/client {r['upstream_ratio']:.3f}",
                    flush=True,
                )
                print(f"    p50 by kind: {r['p50_by_kind']}", flush=True)
                print(f"    answers: {r['cache_states']}", flush=True)
                for example in r["examples"][:5]:
                    print(f"    e.g. {example}", flush=True)
                if "closed_loop" in r:
                    print(f"    one connection: {r['closed_loop']}", flush=True)
                if "balancer" in r:
                    print(f"    balancer: {r['balancer']}", flush=True)
            runs.append(row)
    if "hitpath" in phases:
        hit = hitpath(args)
    if "memory" in phases:
        mem = memory(args)
        print(f"memory: {mem}", flush=True)
    write_report(args, runs, hit, mem, stem)


def out_stem(given: str) -> Path:
    """Where the results go: ``given`` with a directory as it says, a bare name in RESULTS."""
    path = Path(given)
    return path if path.parent != Path(".") else RESULTS / path


def write_report(
    args: argparse.Namespace,
    runs: list[dict[str, dict[str, Any]]],
    hit: dict[str, Any] | None,
    mem: dict[str, Any] | None,
    stem: Path,
) -> None:
    report = Report()
    extra = "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k in ("src", "drone", "drone_config") and v
    )
    report.add(
        f"Command: `python bench/gateway.py --seconds {args.seconds:g} --rate {args.rate:g} "
        f"--warmup {args.warmup:g} --repeat {args.repeat} --phases {args.phases} "
        f"--minutes {args.minutes:g} --wrk-seconds {args.wrk_seconds:g}{extra}`"
    )
    report.add()
    if runs:
        report.add(
            f"Side by side: open loop, {args.rate:g} req/s, {args.warmup:g} s warm-up then "
            f"{args.seconds:g} s measured per target, a new fleet of 3 simulated full nodes "
            "(80 ms median, jitter 0.5, 1% at 500 ms) per target; target on CPU 1, nodes and "
            "load on CPU 0. Latency from the scheduled send time."
        )
        report.add()
        side_table(report, runs)
        report.add()
        for n, run in enumerate(runs, 1):
            ours = run.get("rpcbalancer-cache")
            if ours is None:
                continue
            states: dict[str, int] = {}
            for key, count in ours["cache_states"].items():
                state = key.split(":")[1]
                states[state] = states.get(state, 0) + count
            shares = ", ".join(f"{k} {100 * v / ours['requests']:.1f}%" for k, v in states.items())
            report.add(
                f"Run {n}, rpcbalancer-cache, X-Cache of the answers: {shares} (`-`: not cacheable); "
                f"p50 by kind (ms): {ours['p50_by_kind']}; hedges {ours['balancer']['hedges']}."
            )
            report.add()
    if hit:
        report.add(
            f"Hit path: wrk, 1 thread, {args.connections} connections, {args.wrk_seconds:g} s, "
            f"condenser_api.get_block of block {HOT_BLOCK} with a new id per request"
            + (
                " (drone-miss: a new block each request)"
                if any("drone-miss" in row for row in hit["runs"])
                else ""
            )
            + "; instant nodes. Targets on CPU 1, wrk and the nodes on CPU 0; 1-conn: wrk with "
            "one connection; added: its p50 less the node's (wrk with one connection against one "
            "instant node, the same run)."
        )
        report.add()
        for name, why in (hit.get("skipped") or {}).items():
            report.add(f"- {name} skipped: {why}")
        for label, path in (hit.get("imported") or {}).items():
            report.add(f"- rpcbalancer{'' if label == 'this checkout' else label} ran from {path}")
        if hit.get("skipped") or hit.get("imported"):
            report.add()
        report.add(
            "| run | target | req/s | ÷ nginx-proxy | p50 ms | p99 ms | CPU µs/req | 1-conn p50 ms "
            "| 1-conn p99 ms | added p50 ms | from cache |"
        )
        report.add("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, row in enumerate(hit["runs"], 1):
            node = row.get("node")
            if node:
                report.add(
                    f"| {n} | node (1 conn) | {node['rps_alone']:,.0f} | | | | | "
                    f"{node['p50_alone']:.3f} | {node['p99_alone']:.3f} | | |"
                )
            for name, r in row.items():
                if not isinstance(r, dict) or "rps" not in r:
                    continue
                ratio = r["rps"] / row["nginx-proxy"]["rps"] if "nginx-proxy" in row else 0.0
                added = r.get("added_p50_alone")
                share = r.get("from_cache")
                report.add(
                    f"| {n} | {name} | {r['rps']:,.0f} | {ratio:.2f} | {r['p50']:.2f} | "
                    f"{r['p99']:.2f} | {r['cpu_us_per_req']:.1f} | {r['p50_alone']:.3f} | "
                    f"{r['p99_alone']:.3f} | {'' if added is None else f'{added:+.3f}'} | "
                    f"{'' if share is None else f'{100 * share:.1f}%'} |"
                )
        report.add()
        for n, row in enumerate(hit["runs"], 1):
            pairs = ", ".join(
                f"{k} {v:.2f}x" for k, v in row.items() if isinstance(v, float) and "nginx" not in k
            )
            report.add(f"- run {n}, req/s ratios: {pairs}")
        report.add()
        added = hit.get("added_latency")
        if added:
            rounds = len(next(iter(added.values()))["p50s"])
            report.add(
                f"Added latency, not queued (wrk with one connection, 2 s turns in {rounds} "
                "rounds, targets in a rotating order; the median p50 less the instant node's): "
                + ", ".join(
                    f"{name} {r['added_p50']:+.3f} ms"
                    for name, r in added.items()
                    if name != "node"
                )
                + f" (the node's own: {added['node']['median_p50']:.3f} ms)."
            )
            report.add()
        one = hit["one_connection"]
        f = one["floor (instant node, CPU 0)"]["other"]
        hits = "; ".join(
            f"{name}, {r['hits']} cache hits of the hot block: p50 {r['hit']['p50']:.3f} / p99 "
            f"{r['hit']['p99']:.3f} / p99.9 {r['hit']['p999']:.3f} ms"
            for name, r in one.items()
            if name.partition("@")[0] == "hit"
        )
        report.add(
            f"One connection, one request at a time (this script's raw-socket client): {hits}; "
            f"the floor, the same client against one instant node (nginx `return 200`): "
            f"{f['p50']:.3f} / {f['p99']:.3f} / {f['p999']:.3f} ms."
        )
        report.add()
    if mem:
        cache = mem["cache"]
        report.add(
            f"Memory: {mem['minutes']:g} min of wrk ({args.connections} connections) at "
            f"{mem['rps']:,.0f} req/s, cache.max_bytes {mem['max_mib']} MiB; RSS "
            f"{mem['rss_start_mb']:.1f} MB at start, {mem['rss_end_mb']:.1f} MB at the end (peak "
            f"{mem['rss_peak_mb']:.1f}); the cache held {cache.get('items')} items, "
            f"{cache.get('bytes')} bytes as it counts them: {mem['counted_per_item']:.0f} bytes an "
            f"answer counted, {mem['rss_per_item']:.0f} bytes of RSS growth an answer."
        )
        report.add()
    verdicts(report, runs, hit, mem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.parent / f"{stem.name}.md", stem.parent / f"{stem.name}.json"
    md.write_text("\n".join(report.lines) + "\n")
    js.write_text(
        json.dumps(
            {"args": vars(args), "side": runs, "hitpath": hit, "memory": mem}, indent=2, default=str
        )
    )
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
