"""The fault matrix: rpcbalancer, nginx and HAProxy behind the same broken links.

    sudo .venv/bin/python bench/faults.py [--seconds 20] [--rate 100] [--only blackhole,loss]
        [--balancers rpcbalancer,nginx,haproxy,rpcbalancer@old] [--src DIR] [--repeat N]
        [--out NAME]

Three simulated Steem nodes, each in a network namespace of its own joined to this one by a
veth link (``rpcbalancer.sim.links``); the balancer under test listens on 127.0.0.1 here
(pinned to CPU 1, as in bench/scenarios.py, with the same nginx and HAProxy configurations).
The load is bench/scenarios.py's: open loop at ``--rate`` requests a second, the same mix,
every answer checked (HTTP 200, results present, a head no more than 10 blocks behind).
After 5 seconds one node's link breaks for ``--seconds``, then heals, and the load goes on
10 seconds more. The faults:

* ``blackhole``: every packet to and from the node dropped (no reset: open connections look
  alive, new ones hang);
* ``loss``: 3% of the packets to the node dropped, at random (each loss costs a TCP
  retransmission, 200 ms or more);
* ``flap``: the node's link down and up every 5 seconds (a route that comes and goes);
* ``slowlink``: the link to the node limited to 256 kbit/s (a congested path);
* ``delay``: every packet to the node held 200 ms +- 100 (uniform, each packet its own draw,
  so they reorder), as ``tc netem delay 200ms 100ms`` would; the kernels here have no netem,
  so the packets wait in a queue that ``rpcbalancer.sim.delay`` lets go (NFQUEUE);
* ``dark``: the node's port closed by a firewall that drops (it stays up for pings);
* ``resolver``: the nodes are named (``n1.rpcbt.test``), answered by dnsmasq in a namespace
  of its own, which each balancer asks (a resolv.conf of its own, bind-mounted in a mount
  namespace); its packets are dropped for 60 seconds (whatever ``--seconds`` says), and
  halfway through, the node restarts (its connections closed: new ones are needed).

Beside the reads, a new signed transfer is broadcast every second. Per fault and balancer:
client errors, stale answers, p50/p99/p99.9 and the worst latency (from the scheduled send),
the recovery: seconds from the heal until the node is sent the benchmark's requests again
(``-`` when it was never left, or never taken back); the broadcasts that failed for the
client (an error answer or none), and the transactions that more than one node took as new.
The nodes here do not share a mempool (each is a process of its own, as each steemd is
before gossip), so a transaction sent again to a second node counts there, though a chain
keeps it once (its id is its hash): it is the price of a broadcast re-sent when its first
node's answer was lost. Writes
bench/results/faults.md and faults.json (``--out NAME``: NAME.md and NAME.json).

Needs root, iproute2, nftables and iptables (the delay's queue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import requests
import scenarios
from common import free_port, stop_all, wait_port  # bench/common.py, beside this file
from scenarios import run_load, start_balancer

from rpcbalancer.sim.links import FaultNetwork, Link
from rpcbalancer.sim.process import stop_process

RESULTS = Path(__file__).parent / "results"
PORT = 8090
RESOLVER_SECONDS = 60.0
"""How long the resolver is down (the issue's figure)."""
DOMAIN = "rpcbt.test"
LEAD = 5.0
"""Seconds of load before the fault."""
AFTER = 10.0
"""Seconds of load after it."""


def fault(
    net: FaultNetwork,
    link: Link,
    kind: str,
    seconds: float,
    done: threading.Event,
    restart: Callable[[], None],
) -> None:
    """Break ``link`` as ``kind`` says for ``seconds``, then heal it (``resolver``: the
    resolver's link; ``restart`` restarts the node halfway through)."""
    end = time.monotonic() + seconds
    if kind == "resolver":
        net.close_port(link, 53, "udp")
        time.sleep(seconds / 2)
        restart()
    elif kind == "blackhole":
        net.blackhole(link)
    elif kind == "loss":
        net.loss(link, 3)
    elif kind == "slowlink":
        net.bandwidth(link, "256kbit")
    elif kind == "delay":
        net.delay(link, 0.2, 0.1)
    elif kind == "dark":
        net.close_port(link, PORT)
    elif kind == "flap":
        while time.monotonic() < end and not done.is_set():
            net.down(link)
            time.sleep(min(2.5, max(0.0, end - time.monotonic())))
            net.up(link)
            time.sleep(min(2.5, max(0.0, end - time.monotonic())))
    time.sleep(max(0.0, end - time.monotonic()))
    net.up(link)
    net.heal(link)


def stats(link: Link) -> dict[str, Any]:
    return dict(requests.get(f"http://{link.address}:{PORT}/__stats__", timeout=2).json())


def taken(link: Link) -> int:
    return int(stats(link)["tagged"])


async def load(url: str, seconds: float, rate: float, sends: bool) -> dict[str, Any]:
    """bench/scenarios.py's reads at ``rate``, and (``sends``) a broadcast a second beside
    them."""
    reads, sent = await asyncio.gather(
        run_load(url, seconds, rate, seed=11), broadcasts(url, seconds if sends else 0)
    )
    return {**reads, "broadcasts": sent}


async def broadcasts(url: str, seconds: float) -> dict[str, Any]:
    """A new signed transfer every second, each answer checked: ``ok`` (a result), ``errors``
    (anything else: an error answer, a failed status, no answer within 10 s)."""
    done = {"sent": 0, "ok": 0, "errors": 0}
    stamp = time.time_ns()
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            tx = {
                "ref_block_num": 1,
                "ref_block_prefix": 2,
                "expiration": "2030-01-01T00:00:00",
                "operations": [
                    ["transfer", {"from": "alice", "to": "bob", "amount": "1.000 STEEM"}]
                ],
                "signatures": [f"{stamp:032x}{n:098x}"],  # (unique, as a signature is)
            }
            body = {"jsonrpc": "2.0", "id": n, "method": "condenser_api.broadcast_transaction",
                    "params": [tx]}  # fmt: skip
            done["sent"] += 1
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with session.post(url, json=body, timeout=timeout) as resp:
                    answer = await resp.json(content_type=None)
                    good = resp.status == 200 and "result" in answer
            except (aiohttp.ClientError, TimeoutError, ValueError):
                good = False
            done["ok" if good else "errors"] += 1

        await asyncio.gather(*(_after(n, one) for n in range(int(seconds))))
    return done


async def _after(n: int, work: Callable[[int], Awaitable[None]]) -> None:
    await asyncio.sleep(0.5 + n)
    await work(n)


def run_one(
    kind: str, balancer: str, seconds: float, rate: float, sends: bool = True
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"rpcb-fault-{kind}-"))
    procs: list[Any] = []
    try:
        with FaultNetwork() as net:
            links = {}
            nodes = {}
            for name in ("n1", "n2", "n3"):
                link = net.namespace(name)
                nodes[name] = net.run(link, node_cmd(link), stdout=subprocess.DEVNULL)
                links[name] = link
            for link in links.values():
                wait_listening(link)
            urls = [f"http://{link.address}:{PORT}" for link in links.values()]
            wrap = None
            if kind == "resolver":
                dns = net.namespace("dns")
                answers = [f"--address=/{n}.{DOMAIN}/{link.address}" for n, link in links.items()]
                net.run(dns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                              "--no-resolv", "--no-hosts", "--pid-file=", "--bind-interfaces",
                              "--listen-address", dns.address, *answers],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                urls = [f"http://{n}.{DOMAIN}:{PORT}" for n in links]
                resolv = tmp / "resolv.conf"
                resolv.write_text(f"nameserver {dns.address}\noptions timeout:1 attempts:2\n")
                # The balancer alone sees this resolv.conf (a mount namespace of its own).
                wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]  # fmt: skip
            port = free_port()
            procs.append(start_balancer(balancer, tmp, port, urls, wrap))
            wait_port(port)
            time.sleep(3.0)  # every balancer has looked at its nodes
            broken = links["n1"]
            done = threading.Event()
            healed_at: list[float] = []

            def restart() -> None:
                stop_process(nodes["n1"])
                nodes["n1"] = net.run(broken, node_cmd(broken), stdout=subprocess.DEVNULL)

            def timeline() -> None:
                time.sleep(LEAD)
                if kind == "resolver":
                    fault(net, dns, kind, RESOLVER_SECONDS, done, restart)
                else:
                    fault(net, broken, kind, seconds, done, restart)
                healed_at.append(time.monotonic())
                before = taken(broken)
                while not done.wait(0.1):
                    if taken(broken) > before:
                        healed_at.append(time.monotonic())
                        return

            mover = threading.Thread(target=timeline, daemon=True)
            mover.start()
            if kind == "resolver":
                seconds = RESOLVER_SECONDS
            result = asyncio.run(
                load(f"http://127.0.0.1:{port}/", LEAD + seconds + AFTER, rate, sends)
            )
            result["fault_s"] = seconds
            takers: Counter[str] = Counter()  # each transaction: how many nodes took it
            for link in links.values():
                takers.update(stats(link)["taken"])
            result["broadcasts"]["twice"] = sum(1 for n in takers.values() if n > 1)
            done.set()
            mover.join(30)
            result["recovery_s"] = healed_at[1] - healed_at[0] if len(healed_at) > 1 else None
            del result["latencies"]
            return result
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def node_cmd(link: Link) -> list[str]:
    return ["taskset", "-c", "0", sys.executable, "-m", "rpcbalancer.sim", "--host",
            link.address, "--port", str(PORT), "--node", f"{link.name}:latency=0.005,jitter=0.3"]  # fmt: skip


def wait_listening(link: Link) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            taken(link)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"node {link.name} did not listen")


FAULTS = ("blackhole", "loss", "flap", "slowlink", "delay", "dark", "resolver")


def table(rows: list[dict[str, Any]], seconds: float, rate: float) -> str:
    lines = [
        f"Fault matrix: 3 simulated Steem nodes in network namespaces, one node's link broken "
        f"for {seconds:g} s (the resolver: {RESOLVER_SECONDS:g} s, the node restarted halfway) "
        f"under {rate:g} req/s (open loop, bench/scenarios.py's mix); `bench/faults.py`.",
        "",
        "| fault | balancer | requests | errors | stale | p50 ms | p99 ms | p99.9 ms | max ms "
        "| recovery s | broadcasts failed | on two nodes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        sends = r["broadcasts"]
        lines.append(
            f"| {r['fault']} | {r['balancer']} | {r['requests']} | {r['errors']} | {r['stale']} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | {r['max']:.0f} | {recovery} "
            f"| {sends['errors']} of {sends['sent']} | {sends['twice']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--only", help="comma-separated faults")
    parser.add_argument("--balancers", default="rpcbalancer,nginx,haproxy")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default="faults")
    parser.add_argument("--src", type=Path, help="the checkout that rpcbalancer@old runs")
    parser.add_argument("--no-broadcasts", action="store_true", help="reads only")
    args = parser.parse_args()
    scenarios.SOURCE = args.src.resolve() if args.src else None
    # SIGTERM unwinds like Ctrl-C, so the namespaces, links and processes are taken down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kinds = args.only.split(",") if args.only else list(FAULTS)
    rows = []
    for kind in kinds:
        for _ in range(args.repeat):
            for balancer in args.balancers.split(","):
                result = run_one(kind, balancer, args.seconds, args.rate, not args.no_broadcasts)
                row = {"fault": kind, "balancer": balancer, **result}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "slow"}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"{args.out}.md").write_text(table(rows, args.seconds, args.rate))
    print(table(rows, args.seconds, args.rate))


if __name__ == "__main__":
    main()
