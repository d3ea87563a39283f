"""Tail latency and availability on a bad day: rpcbalancer beside nginx and HAProxy.

    .venv/bin/python bench/scenarios.py [--seconds 30] [--rate 200] [--only tail,hang]
        [--repeat N] [--balancers rpcbalancer,nginx] [--src OTHER_CHECKOUT]

For each scenario, a fleet of 3 fake Steem nodes (one `python -m rpcbalancer.sim` process,
scripted over time) stands behind each balancer in turn: rpcbalancer (its default strategy,
and `race`), nginx (round-robin, keep-alive, passive checks, next upstream on error,
timeout and 503) and HAProxy (leastconn, active checks, retries, redispatch). The balancer
under test is pinned to CPU 1; the nodes and the load generator to CPU 0.

The load is open loop: requests are sent at fixed times (``--rate`` per second) whatever
the answers do, and each latency is measured from the *scheduled* send time, so queueing
is not hidden. The mix: dynamic global properties (50%), get_block of a recent block (25%),
get_version (10%), a batch of three (10%), GET / (5%). Every answer is checked: HTTP 200,
JSON-RPC results present, the head block no more than 10 blocks (30 s) behind the real
chain head, a recent block found. Upstream requests per client request come from the fake
nodes' own count of the benchmark's JSON-RPC ids (probes are not counted).

Writes bench/results/scenarios.md (the table) and scenarios.json (``--out NAME`` writes
NAME.md and NAME.json instead); with matplotlib installed, one PNG chart per scenario (a run
with ``--only`` or ``--out`` leaves the charts as they are). ``--repeat N`` runs every pair N times (one row each, and
the count of requests slower than 1 s: the tail a client notices). ``--src DIR`` runs
rpcbalancer from another checkout (``DIR/src``) for the balancers named with ``@``
(``--balancers rpcbalancer,rpcbalancer@old``): before/after pairs in one run. Every process
is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (  # bench/common.py, beside this file
    checkout_env,
    free_port,
    serve_cmd,
    stop_all,
    wait_port,
)

from rpcbalancer.sim.node import chain_head

RESULTS = Path(__file__).parent / "results"
NODES = ("n1", "n2", "n3")
LEAD = 5.0  # seconds between the fleet's start and the load's: every balancer has checked


def scenarios(seconds: float) -> dict[str, tuple[dict[str, dict[str, float]], list[Any]]]:
    """Name -> (behaviour per node, script of changes over time)."""
    third = seconds / 3
    base = {"latency": 0.005, "jitter": 0.2}
    flap: list[Any] = []
    t = 2.0
    while t < seconds:
        flap += [[t, "n1", {"dead": True}], [t + 2.0, "n1", {"dead": False}]]
        t += 4.0
    return {
        "uniform": ({n: dict(base) for n in NODES}, []),
        "hetero": (
            {
                "n1": {"latency": 0.003, "jitter": 0.2},
                "n2": {"latency": 0.015, "jitter": 0.2},
                "n3": {"latency": 0.060, "jitter": 0.2},
            },
            [],
        ),
        "tail": (
            {
                "n1": {**base, "tail_rate": 0.05, "tail_latency": 0.8},
                "n2": dict(base),
                "n3": dict(base),
            },
            [],
        ),
        "die": (
            {n: dict(base) for n in NODES},
            [[third, "n1", {"dead": True}], [2 * third, "n1", {"dead": False}]],
        ),
        "hang": ({n: dict(base) for n in NODES}, [[third, "n1", {"hang_rate": 0.3}]]),
        "errors": ({"n1": {**base, "fail_rate": 0.3}, "n2": dict(base), "n3": dict(base)}, []),
        "stale": (
            {
                "n1": {"latency": 0.001, "jitter": 0.2, "lag": 500},
                "n2": dict(base),
                "n3": dict(base),
            },
            [],
        ),
        "flap": ({n: dict(base) for n in NODES}, flap),
    }


PUBLIC_SECONDS = 120.0
PUBLIC_RATE = 100.0


def public() -> tuple[dict[str, dict[str, float]], list[Any]]:
    """A fleet that looks like the public Steem API from one region: eight nodes with medians
    from 30 to 400 ms and heavy tails (log-normal, p99 about 4x the median, and 1% of
    answers at 3x the median on top), the fastest one 100 blocks behind, one answering 503
    for a minute from 20 s, one dying at 60 s for good. Two minutes at 100 requests/s, long
    enough for the canary's rounds to matter."""
    medians = {
        "lag30": 0.030,
        "n35": 0.035,
        "n50": 0.050,
        "n80": 0.080,
        "n120": 0.120,
        "n180": 0.180,
        "n260": 0.260,
        "n400": 0.400,
    }
    behaviours = {
        name: {"latency": m, "jitter": 0.6, "tail_rate": 0.01, "tail_latency": 3 * m}
        for name, m in medians.items()
    }
    behaviours["lag30"]["lag"] = 100
    script = [
        [20.0, "n50", {"fail_rate": 1.0}],
        [80.0, "n50", {"fail_rate": 0.0}],
        [60.0, "n80", {"dead": True}],
    ]
    return behaviours, script


# -- the load ------------------------------------------------------------------------------


def request_for(rng: random.Random, i: int) -> tuple[str, bytes | None, int]:
    """(kind, body, JSON-RPC members) of the i-th request."""
    head = chain_head(time.time()) - 2
    roll = rng.random()
    ident = f"b-{i}"

    def call(method: str, params: Any, suffix: str = "") -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": method, "params": params, "id": ident + suffix}

    if roll < 0.50:
        return (
            "dgp",
            json.dumps(call("condenser_api.get_dynamic_global_properties", [])).encode(),
            1,
        )
    if roll < 0.75:
        return "block", json.dumps(call("condenser_api.get_block", [head])).encode(), 1
    if roll < 0.85:
        return "version", json.dumps(call("condenser_api.get_version", [])).encode(), 1
    if roll < 0.95:
        batch = [
            call("condenser_api.get_dynamic_global_properties", [], "a"),
            call("condenser_api.get_version", [], "b"),
            call("condenser_api.get_block", [head], "c"),
        ]
        return "batch", json.dumps(batch).encode(), 3
    return "status", None, 0


def check(kind: str, status: int, body: bytes) -> tuple[bool, bool]:
    """(error, stale) of one answer."""
    if status != 200:
        return True, False
    try:
        doc = json.loads(body)
    except ValueError:
        return True, False
    members = doc if isinstance(doc, list) else [doc]
    if kind == "status":
        return doc.get("status") != "OK" if isinstance(doc, dict) else True, False
    if any(not isinstance(m, dict) or "result" not in m for m in members):
        return True, False
    now_head = chain_head(time.time())
    for m in members:
        result = m["result"]
        fresh = (
            not isinstance(result, dict)
            or result.get("head_block_number", now_head) >= now_head - 10
        )
        if not fresh:
            return False, True
        if kind in ("block", "batch") and result is None:
            return False, True  # a recent block the node does not have: stale
    return False, False


async def run_load(url: str, seconds: float, rate: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    latencies: list[float] = []
    slow: list[dict[str, Any]] = []
    errors = stale = members = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.2
        tasks = []

        async def one(i: int, due: float) -> None:
            nonlocal errors, stale, members
            kind, body, count = request_for(rng, i)
            members += count
            try:
                if body is None:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        data, status = await resp.read(), resp.status
                        how = {
                            k: v for k, v in resp.headers.items() if k.lower().startswith("x-rpc")
                        }
                else:
                    async with session.post(
                        url,
                        data=body,
                        timeout=aiohttp.ClientTimeout(total=5),
                        headers={"content-type": "application/json"},
                    ) as resp:
                        data, status = await resp.read(), resp.status
                        how = {
                            k: v for k, v in resp.headers.items() if k.lower().startswith("x-rpc")
                        }
                failed, old = check(kind, status, data)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed, old, how = True, False, {"error": type(exc).__name__}
            latencies.append(loop.time() - due)
            if latencies[-1] > 1.0:  # the tail a client notices: how was it served?
                slow.append({"at": round(due - start, 2), "ms": round(latencies[-1] * 1000), **how})
            errors += failed
            stale += old

        total = int(seconds * rate)
        for i in range(total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    latencies.sort()
    q = statistics.quantiles(latencies, n=1000)
    return {
        "requests": total,
        "members": members,
        "errors": errors,
        "stale": stale,
        "over_1s": sum(1 for x in latencies if x > 1.0),
        "slow": slow[:20],
        "max": latencies[-1] * 1000,
        "p50": q[499] * 1000,
        "p99": q[989] * 1000,
        "p999": q[998] * 1000,
        "latencies": latencies,
    }


# -- the balancers -------------------------------------------------------------------------


def nginx_conf(tmp: Path, port: int, nodes: list[str]) -> Path:
    servers = "\n".join(
        f"    server {u.removeprefix('http://')} max_fails=3 fail_timeout=5s;" for u in nodes
    )
    path = tmp / "nginx.conf"
    path.write_text(f"""pid {tmp}/nginx.pid; error_log {tmp}/nginx.err; daemon off; worker_processes 1;
events {{ worker_connections 4096; }}
http {{ access_log off;
  upstream nodes {{
{servers}
    keepalive 64;
  }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; proxy_read_timeout 2s; proxy_send_timeout 2s;
      proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
      proxy_next_upstream_tries 3; }} }}
}}
""")
    return path


def haproxy_conf(tmp: Path, port: int, nodes: list[str]) -> Path:
    servers = "\n".join(
        f"  server s{i} {u.removeprefix('http://')} check inter 1s fall 2 rise 2"
        for i, u in enumerate(nodes)
    )
    path = tmp / "haproxy.cfg"
    path.write_text(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 2s
  retries 2
  option redispatch
  retry-on conn-failure empty-response response-timeout 503
  option http-buffer-request
frontend fe
  bind 127.0.0.1:{port}
  default_backend nodes
backend nodes
  balance leastconn
  option httpchk GET /
  http-check expect status 200
  http-reuse always
{servers}
""")
    return path


SOURCE: Path | None = None
"""Another checkout whose ``src`` runs as rpcbalancer (``--src``)."""


NO_CACHE = {"cache": {"enabled": False}}
"""The scenarios measure routing: every request to a node (the answer cache, on by default
since #20, would answer the repeats of this mix; ``rpcbalancer-cache`` shows what it does)."""
VARIANTS = {
    "rpcbalancer": {"strategy": "fastest", **NO_CACHE},
    "rpcbalancer-ewma": {"strategy": {"name": "fastest", "model": "peak_ewma"}, **NO_CACHE},
    "rpcbalancer-race": {"strategy": "race", **NO_CACHE},
    "rpcbalancer-cache": {"strategy": "fastest", "cache": {"enabled": True}},
}
"""rpcbalancer as the benchmark runs it: the default strategy, the classic peak-EWMA rule, the
race (all three without the cache), and the default with the cache."""


def start_balancer(
    name: str, tmp: Path, port: int, nodes: list[str], wrap: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """``wrap``: a command that runs the balancer's (bench/faults.py: another resolv.conf)."""
    pin = [*(wrap or []), "taskset", "-c", "1"]
    name, _, other = name.partition("@")  # "rpcbalancer@old": from the --src checkout
    env = checkout_env(SOURCE if other and name.startswith("rpcbalancer") else None)
    if name.startswith("rpcbalancer"):
        config = tmp / f"{name}.json"
        config.write_text(
            json.dumps(
                {
                    "nodes": nodes,
                    **VARIANTS[name],
                    "log_level": "warning",
                    "store": f"sqlite:///{tmp}/{name}-health.db",
                    "probe": {"interval": 2},
                    "timeouts": {"per_try": 2, "total": 4},
                }
            )
        )
        cmd = serve_cmd(config, port)
    elif name == "nginx":
        cmd = ["nginx", "-c", str(nginx_conf(tmp, port, nodes)), "-p", str(tmp)]
    else:
        cmd = ["haproxy", "-f", str(haproxy_conf(tmp, port, nodes))]
    return subprocess.Popen(
        pin + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


async def tagged(nodes: list[str]) -> list[int]:
    """How many of the benchmark's JSON-RPC calls each node got (probes are not counted)."""
    counts = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for url in nodes:
            async with session.get(url + "/__stats__") as resp:
                counts.append((await resp.json())["tagged"])
    return counts


def run_scenario(
    name: str,
    behaviours: dict[str, dict[str, float]],
    script: list[Any],
    balancer: str,
    seconds: float,
    rate: float,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"rpcb-{name}-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        args = []
        for node in behaviours:
            spec = ",".join(f"{k}={v}" for k, v in behaviours[node].items())
            args += ["--node", f"{node}:{spec}" if spec else node]
        # The script's clock starts with the fleet; the load starts LEAD seconds later.
        timed = [[at + LEAD, node, change] for at, node, change in script]
        timed += [[LEAD + seconds + 0.5, n, {"dead": False}] for n in behaviours]
        fleet_started = time.monotonic()
        fleet = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-m",
                "rpcbalancer.sim",
                *args,
                "--script",
                json.dumps(timed),
            ],
            stdout=subprocess.PIPE,
        )
        procs.append(fleet)  # type: ignore[arg-type]
        assert fleet.stdout is not None
        urls = list(json.loads(fleet.stdout.readline()).values())
        port = free_port()
        procs.append(start_balancer(balancer, tmp, port, urls))
        wait_port(port)
        # First health checks everywhere, then the load starts on the script's schedule.
        time.sleep(max(0.0, fleet_started + LEAD - 0.2 - time.monotonic()))
        result = asyncio.run(run_load(f"http://127.0.0.1:{port}/", seconds, rate, seed=7))
        time.sleep(max(0.0, fleet_started + LEAD + seconds + 1.0 - time.monotonic()))
        per_node = asyncio.run(tagged(urls))
        result["per_node"] = dict(zip(behaviours, per_node, strict=True))
        result["upstream_ratio"] = sum(per_node) / max(1, result["members"])
        return result
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def chart(name: str, results: dict[str, dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    labels = list(results)
    width = 0.27
    for offset, (key, label) in enumerate((("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        ax.bar(
            [i + offset * width for i in range(len(labels))],
            [results[b][key] for b in labels],
            width=width,
            label=label,
        )
    ax.set_xticks([i + width for i in range(len(labels))], labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms from scheduled send (log)")
    ax.set_title(f"{name}: latency")
    ax.legend(fontsize=8)
    shares = {
        "errors %": [100 * results[b]["errors"] / results[b]["requests"] for b in labels],
        "stale %": [100 * results[b]["stale"] / results[b]["requests"] for b in labels],
        "upstream/client x10": [10 * results[b]["upstream_ratio"] for b in labels],
    }
    for offset, (label, values) in enumerate(shares.items()):
        bx.bar([i + offset * width for i in range(len(labels))], values, width=width, label=label)
    bx.set_xticks([i + width for i in range(len(labels))], labels, fontsize=8)
    bx.set_title(f"{name}: errors, stale answers, upstream cost")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--only", help="comma-separated scenarios")
    parser.add_argument("--balancers", default="rpcbalancer,rpcbalancer-race,nginx,haproxy")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each pair")
    parser.add_argument("--src", type=Path, help="run rpcbalancer from this checkout")
    parser.add_argument(
        "--out",
        default="scenarios",
        help="results/OUT.md and OUT.json (charts only for the full run's default)",
    )
    args = parser.parse_args()
    global SOURCE
    SOURCE = args.src.resolve() if args.src else None
    for tool in ("nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx-light haproxy util-linux)")
    RESULTS.mkdir(exist_ok=True)
    table = [
        "| scenario | balancer | p50 ms | p99 ms | p99.9 ms | max ms | over 1 s | errors % "
        "| stale % | upstream/client |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    everything: dict[str, Any] = {}
    plan = {
        name: (behaviours, script, args.seconds, args.rate)
        for name, (behaviours, script) in scenarios(args.seconds).items()
    }
    plan["public"] = (*public(), PUBLIC_SECONDS, PUBLIC_RATE)
    for name, (behaviours, script, seconds, rate) in plan.items():
        if args.only and name not in args.only.split(","):
            continue
        if name == "public" and not args.only:
            continue  # two minutes a run: asked for by name
        results = {}
        for run in range(args.repeat):
            for balancer in args.balancers.split(","):
                try:
                    r = run_scenario(name, behaviours, script, balancer, seconds, rate)
                except Exception as exc:  # one broken run must not lose the others
                    print(f"| {name} | {balancer} | run failed: {type(exc).__name__}: {exc} |")
                    continue
                results[balancer if args.repeat == 1 else f"{balancer}#{run + 1}"] = r
                row = (
                    f"| {name} | {balancer} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | "
                    f"{r['max']:.0f} | {r['over_1s']} | {100 * r['errors'] / r['requests']:.2f} | "
                    f"{100 * r['stale'] / r['requests']:.2f} | {r['upstream_ratio']:.2f} |"
                )
                table.append(row)
                print(row, flush=True)
                print(f"    forwarded per node: {r['per_node']}", flush=True)
                for how in r["slow"][:5]:
                    print(f"    slow: {how}", flush=True)
        if args.out == "scenarios" and not args.only:
            chart(name, results)  # (a partial or paired run keeps the committed charts)
        everything[name] = {
            b: {k: v for k, v in r.items() if k != "latencies"} for b, r in results.items()
        }
    header = (
        f"Open loop, {args.rate:g} req/s for {args.seconds:g} s per run, 3 fake nodes, "
        f"balancer pinned to CPU 1 (nodes and load on CPU 0). Command: "
        f"`python bench/scenarios.py --seconds {args.seconds:g} --rate {args.rate:g}`\n\n"
    )
    (RESULTS / f"{args.out}.md").write_text(header + "\n".join(table) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(everything, indent=2))
    print(f"wrote {RESULTS / args.out}.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
