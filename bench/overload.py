"""Overload: one worker offered 1.5x and 3x what it can serve, beside nginx and HAProxy.

    .venv/bin/python bench/overload.py [--seconds 10] [--balancers rpcbalancer,nginx,haproxy]
        [--capacity RPS] [--set JSON] [--out NAME] [--src DIR]
        [--refusals] [--cost-rates R,R] [--costs-only]

The nodes are throughput.py's: three nginx server blocks answering fixed JSON from memory,
so the balancer is what runs out. Each balancer (one process, pinned to CPU 1 and held to
``--quota`` of it, half by default, by a cgroup; the nodes and the load on CPU 0) is
measured in turn (``rpcbalancer@old``: the ``src`` of the checkout ``--src`` names, for a
paired run against another build):

1. its **capacity**: vegeta at the highest rate it can get answered (closed loop, as many
   workers as ``--connections``, ``--seconds``), in answers a second. rpcbalancer's is the unit of the load for
   every balancer (``--capacity`` gives it instead);
2. **open loop** at 1.5x, then 3x, that capacity for ``--seconds`` each (vegeta: every
   request sent on its schedule whatever the answers do, so a queue shows as latency),
   then 0.5x for 5 seconds: the **recovery**.

Per phase: the rate offered, the goodput (answers 200 a second, and as a share of the
capacity), the refusals (503: how many, p50/p99/max of their latency, and whether each had
``Retry-After``), the answered requests' p50/p99/max, the other failures (timeouts,
resets: what a client cannot tell from a dead server), and the balancer's CPU time per
request sent (its processes, from /proc).

Then, with ``--refusals`` (rpcbalancer's builds only), **what a refusal costs** beside an
answer, in CPU time per request, each with room to spare (a whole core, no cap; open loop at
1x for ``--seconds``): the balancer answering every request (admission off), then refusing
all but one (``max_inflight: 1`` in front of nodes that take connections and never answer);
beside them, the least any server on this loop can spend per request: a uvloop protocol that
writes a fixed 503 for each read (``bare``, no parsing at all). ``--cost-rates`` runs them at
given rates instead of 1x (the cost per request depends on how many come per wake-up);
``--costs-only`` skips everything else. Writes bench/results/NAME.md and .json.

Needs nginx, HAProxy and vegeta 12.13.0 (``go install github.com/tsenart/vegeta/v12@v12.13.0``,
on ``PATH`` or in ``$GOBIN``): an open-loop load generator at rates a Python one cannot send.
Every process is stopped by its PID; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (  # bench/common.py, beside this file
    checkout_env,
    free_port,
    serve_cmd,
    stop_all,
    wait_port,
)
from throughput import write_configs

RESULTS = Path(__file__).parent / "results"
CALL = (
    b'{"jsonrpc":"2.0","method":"condenser_api.get_dynamic_global_properties","params":[],"id":1}'
)
PHASES = (("1.5x", 1.5), ("3x", 3.0), ("recovery 0.5x", 0.5))


def vegeta() -> str:
    found = shutil.which("vegeta") or str(Path(os.environ.get("GOBIN", "/tmp/gobin")) / "vegeta")
    if not Path(found).exists():
        sys.exit("vegeta is needed: go install github.com/tsenart/vegeta/v12@v12.13.0")
    return found


CONNECTIONS = 512
"""Connections the load keeps open at most (``--connections``): clients with keep-alive
pools. Without a cap an open loop against a server that falls behind opens a connection
per request waiting, until the listen queue overflows and SYNs are retried for seconds:
that measures the kernel's accept queue, not the server."""


def attack(
    tmp: Path, port: int, rate: float, seconds: float, closed: bool = False, connections: int = 0
) -> list[Any]:
    """Run vegeta against the balancer on ``port``; each result as (start ns, status,
    latency ns, error, has Retry-After)."""
    body = tmp / "call.json"
    body.write_bytes(CALL)
    targets = tmp / "targets.txt"
    targets.write_text(f"POST http://127.0.0.1:{port}/\nContent-Type: application/json\n@{body}\n")
    out = tmp / "results.bin"
    shape = (
        ["-rate", "0", "-max-workers", str(connections or CONNECTIONS)]
        if closed
        else ["-rate", f"{rate:.0f}/1s"]
    )
    cmd = ["taskset", "-c", "0", vegeta(), "attack", "-targets", str(targets), *shape,
           "-duration", f"{seconds}s", "-timeout", "10s", "-output", str(out),
           "-max-connections", str(connections or CONNECTIONS)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=seconds + 30)
    encoded = subprocess.run(
        [vegeta(), "encode", "--to", "csv", str(out)],
        check=True, capture_output=True, timeout=120,
    ).stdout.decode()  # fmt: skip
    rows = []
    for row in csv.reader(encoded.splitlines()):
        # timestamp, code, latency, bytes out, bytes in, error, body, attack, seq, method,
        # url, headers (base64 of the header block)
        headers = base64.b64decode(row[11]).lower() if len(row) > 11 else b""
        rows.append((int(row[0]), int(row[1]), int(row[2]), row[5], b"retry-after" in headers))
    return rows


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of process ``pid`` and its children so far: nginx
    answers in a worker it forks."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measured(
    pid: int, tmp: Path, port: int, rate: float, seconds: float, capacity: float | None, **kw: Any
) -> dict[str, Any]:
    """One phase of load against ``port``: its summary, with the CPU the balancer
    (``pid``) spent on it per request sent, in microseconds."""
    before = cpu_seconds(pid)
    rows = attack(tmp, port, rate, seconds, **kw)
    spent = cpu_seconds(pid) - before
    result = summary(rows, seconds, capacity)
    result["cpu_us"] = round(spent * 1e6 / len(rows), 1) if rows else None
    return result


def summary(rows: list[Any], seconds: float, capacity: float | None) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    ok = [r[2] / 1e6 for r in rows if r[1] == 200]
    refused = [r for r in rows if r[1] == 503]
    refused_ms = [r[2] / 1e6 for r in refused]
    goodput = len(ok) / seconds
    return {
        "sent": len(rows),
        "offered_rps": round(len(rows) / seconds),
        "goodput_rps": round(goodput),
        "goodput_share": round(goodput / capacity, 3) if capacity else None,
        "ok_p50": pct(ok, 0.5),
        "ok_p99": pct(ok, 0.99),
        "ok_max": max(ok) if ok else None,
        "refused": len(refused),
        "refused_with_retry_after": sum(1 for r in refused if r[4]),
        "refused_p50": pct(refused_ms, 0.5),
        "refused_p99": pct(refused_ms, 0.99),
        "refused_max": max(refused_ms) if refused_ms else None,
        "failed": sum(1 for r in rows if r[1] not in (200, 503)),
    }


CGROUP = Path("/sys/fs/cgroup/cpu/rpcbalancer-overload")
"""A cgroup (v1 cpu controller) that caps the balancer under test at ``--quota`` of a core."""


def cap(pid: int, quota: float) -> None:
    """Hold process ``pid`` and its children (nginx answers in a worker it forks) to
    ``quota`` of one core, in 10 ms periods (short enough that the throttle is not itself a
    stall of the loop: 5 ms on, 5 ms off at 0.5)."""
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "cpu.cfs_period_us").write_text("10000")
    (CGROUP / "cpu.cfs_quota_us").write_text(str(int(10000 * quota)))
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # (gone meanwhile)
            (CGROUP / "cgroup.procs").write_text(str(each))


def descendants(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def uncap() -> None:
    if CGROUP.exists():
        CGROUP.rmdir()  # (empty once its process has ended)


BARE = """
import asyncio, sys, uvloop
BODY = b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"Overloaded"},"id":null}'
ANSWER = (b"HTTP/1.1 503 Service Unavailable\\r\\ncontent-type: application/json\\r\\n"
          b"retry-after: 1\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY))
class Refuse(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.transport.write(ANSWER)
async def main():
    await asyncio.get_running_loop().create_server(Refuse, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
uvloop.run(main())
"""
"""The least a server on uvloop can do per request (``--refusals``): a fixed 503 written for
each read, nothing parsed (one request per read, as the load sends them)."""

SOURCE: Path | None = None
"""Another checkout whose ``src`` runs as ``rpcbalancer@old`` (``--src``)."""


def start(name: str, tmp: Path, port: int, config: Path) -> subprocess.Popen[bytes]:
    if name == "rpcbalancer@old" and SOURCE is None:
        sys.exit("rpcbalancer@old runs the checkout given by --src")
    env = checkout_env(SOURCE if name == "rpcbalancer@old" else None)
    if name.startswith("rpcbalancer"):
        cmd = serve_cmd(config, port)
    elif name == "nginx":
        cmd = ["nginx", "-c", str(tmp / "proxy.conf"), "-p", str(tmp)]
    else:
        cmd = ["haproxy", "-f", str(tmp / "haproxy.cfg")]
    return subprocess.Popen(
        ["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


def table(rows: list[dict[str, Any]], capacity: float, seconds: float) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    if all(", a whole core, " in r["phase"] for r in rows):  # --costs-only
        title = (
            f"What a request costs one worker with room to spare (a whole core), open loop "
            f"for {seconds:g} s at each rate: answers (nodes answer from memory), refusals, "
            "and a bare uvloop server's fixed 503; `bench/overload.py --costs-only`."
        )
    else:
        title = (
            f"Overload: one worker, offered multiples of rpcbalancer's capacity ({capacity:.0f} "
            f"answers/s, closed loop) open loop for {seconds:g} s each (the recovery: 5 s at "
            "0.5x right after 3x); nodes answer from memory; `bench/overload.py`."
        )
    lines = [
        title,
        "",
        "| balancer | phase | offered/s | goodput/s | of capacity | ok p50 ms | ok p99 ms "
        "| ok max ms | refused | with Retry-After | refused p50 ms | refused p99 ms "
        "| refused max ms | other failures | CPU µs per request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = "-" if r["goodput_share"] is None else f"{r['goodput_share']:.0%}"
        lines.append(
            f"| {r['balancer']} | {r['phase']} | {r['offered_rps']} | {r['goodput_rps']} "
            f"| {share} | {ms(r['ok_p50'])} | {ms(r['ok_p99'])} | {ms(r['ok_max'])} "
            f"| {r['refused']} | {r['refused_with_retry_after']} | {ms(r['refused_p50'])} "
            f"| {ms(r['refused_p99'])} | {ms(r['refused_max'])} | {r['failed']} "
            f"| {ms(r.get('cpu_us'))} |"
        )
    return "\n".join(lines) + "\n"


def refusal_costs(
    args: argparse.Namespace,
    tmp: Path,
    config: Path,
    rate: float,
    launch: Callable[[str, Path, bool], subprocess.Popen[bytes]],
    ports: dict[str, int],
    procs: list[subprocess.Popen[bytes]],
) -> list[dict[str, Any]]:
    """CPU per request with room to spare (a whole core, not capped), open loop at ``rate``
    a second: rpcbalancer's builds answering every request, then refusing all but one, then
    the bare uvloop server refusing all."""
    sinks = []
    for _ in range(3):  # nodes that take a connection and never answer
        sink = socket.socket()
        sink.bind(("127.0.0.1", 0))
        sink.listen(4096)
        sinks.append(sink)
    rows = []
    try:
        settings = json.loads(config.read_text())
        settings["nodes"] = [f"http://127.0.0.1:{k.getsockname()[1]}" for k in sinks]
        settings["overload"] = {"max_inflight": 1, "max_queue_time": 0}
        refusing = tmp / "refusing.json"
        refusing.write_text(json.dumps(settings))
        unguarded = tmp / "unguarded.json"
        names = [n for n in args.balancers.split(",") if n.startswith("rpcbalancer")]
        runs = [(n, "answers only") for n in names] + [(n, "refusals only") for n in names]
        for name, phase in [*runs, ("bare", "refusals only")]:
            if name == "bare":
                port = free_port()
                proc = subprocess.Popen(
                    ["taskset", "-c", "1", sys.executable, "-c", BARE, str(port)],
                    env=checkout_env(None),
                )  # fmt: skip
                procs.append(proc)
                wait_port(port)
            else:
                proc = launch(name, refusing if phase == "refusals only" else unguarded, False)
                port = ports[name]
            attack(tmp, port, rate / 4, 2)  # warm-up
            result = measured(proc.pid, tmp, port, rate, args.seconds, None)
            rows.append(
                {"balancer": name, "phase": f"{phase}, a whole core, {rate:.0f}/s", **result}
            )
            print(json.dumps(rows[-1]), flush=True)
            stop_all([proc])
            procs.remove(proc)
    finally:
        for sink in sinks:
            sink.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--balancers", default="rpcbalancer,nginx,haproxy")
    parser.add_argument("--capacity", type=float, help="answers/s taken as 1x")
    parser.add_argument("--set", default="{}", help="JSON merged into rpcbalancer's config")
    parser.add_argument("--out", default="overload")
    parser.add_argument(
        "--quota",
        type=float,
        default=0.5,
        help="share of one core each balancer may use (1: a whole core): the load generator "
        "must send 3x what the balancer serves from the other core of two",
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--src", type=Path, help="the checkout that rpcbalancer@old runs")
    parser.add_argument(
        "--refusals",
        action="store_true",
        help="then measure what a refusal costs rpcbalancer's builds, beside a bare uvloop one",
    )
    parser.add_argument(
        "--cost-rates", help="the rates (a second, comma-separated) of --refusals (1x: capacity)"
    )
    parser.add_argument(
        "--costs-only", action="store_true", help="only --refusals' phases, at --cost-rates"
    )
    args = parser.parse_args()
    global SOURCE
    SOURCE = args.src.resolve() if args.src else None
    for tool in ("nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install nginx-light haproxy util-linux)")
    vegeta()
    tmp = Path(tempfile.mkdtemp(prefix="rpcb-overload-"))
    node_ports = [free_port() for _ in range(3)]
    ports = {name: free_port() for name in ("rpcbalancer", "nginx", "haproxy", "rpcbalancer@old")}
    config = write_configs(tmp, node_ports, ports, json.loads(args.set))

    def port_for(name: str) -> int:
        """A port free now: one picked at start may be taken since, as the source port of
        one of the load's many connections."""
        ports[name] = free_port()
        write_configs(tmp, node_ports, ports, json.loads(args.set))
        return ports[name]

    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    capacity: float | None = args.capacity
    try:
        nodes = ["taskset", "-c", "0", "nginx", "-c", str(tmp / "nodes.conf"), "-p", str(tmp)]
        procs.append(subprocess.Popen(nodes))
        for p in node_ports:
            wait_port(p)
        # rpcbalancer's capacity is measured with its admission by load off: a closed loop
        # of many connections is a standing queue, which it would (rightly) refuse.
        unguarded = tmp / "unguarded.json"

        def launch(name: str, configuration: Path, capped: bool = True) -> subprocess.Popen[bytes]:
            """Start balancer ``name`` on a port free now, capped, and wait for it."""
            port_for(name)
            proc = start(name, tmp, ports[name], configuration)
            procs.append(proc)
            if capped and args.quota < 1:
                cap(proc.pid, args.quota)
            wait_port(ports[name])
            time.sleep(1.0)
            if capped and args.quota < 1:
                cap(proc.pid, args.quota)  # and what it forked meanwhile
            return proc

        off = {"overload": {"max_queue_time": 0, "max_inflight": 0}}
        unguarded.write_text(json.dumps({**json.loads(config.read_text()), **off}))
        for name in [] if args.costs_only else args.balancers.split(","):
            proc = launch(name, unguarded)
            attack(tmp, ports[name], 0, 2, closed=True)  # warm-up
            own = measured(proc.pid, tmp, ports[name], 0, args.seconds, None, closed=True)
            print(f"{name}: capacity {own['goodput_rps']} answers/s", flush=True)
            if capacity is None:
                capacity = float(own["goodput_rps"])
            rows.append({"balancer": name, "phase": "capacity (closed loop)", **own})
            if name.startswith("rpcbalancer"):  # the phases below meet the configuration as it is
                stop_all([proc])
                procs.remove(proc)
                uncap()
                proc = launch(name, config)
            for phase, factor in PHASES:
                seconds = 5.0 if factor < 1 else args.seconds
                result = measured(
                    proc.pid, tmp, ports[name], capacity * factor, seconds, capacity,
                    connections=args.connections,
                )  # fmt: skip
                rows.append({"balancer": name, "phase": phase, **result})
                print(json.dumps(rows[-1]), flush=True)
            stop_all([proc])
            procs.remove(proc)
            uncap()
        if args.refusals or args.costs_only:
            rates = [float(r) for r in args.cost_rates.split(",")] if args.cost_rates else []
            if not rates:
                assert capacity is not None, "--costs-only needs --cost-rates"
                rates = [capacity]
            capacity = capacity or rates[0]
            for rate in rates:
                rows += refusal_costs(args, tmp, config, rate, launch, ports, procs)
    finally:
        stop_all(procs)
        uncap()
        shutil.rmtree(tmp, ignore_errors=True)
    assert capacity is not None
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"{args.out}.md").write_text(table(rows, capacity, args.seconds))
    print(table(rows, capacity, args.seconds))


if __name__ == "__main__":
    main()
