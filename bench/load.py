"""A closed-loop load test: the balancer in front of a fake fleet, beside the bare node.

    .venv/bin/python bench/load.py [--seconds 10] [--concurrency 32] [--strategy fastest]

Starts a fake fleet (its own process) and `rpcbalancer serve` (its own process), then drives
the same load at one fake node directly and through the balancer, in turns, and prints
req/s, p50/p99 latency and errors for both, and the ratios. Every loop is bounded in time
and count; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import DGP_BODY as BODY  # bench/common.py, beside this file
from common import free_port, serve_cmd, stop_all

MAX_REQUESTS = 2_000_000


async def drive(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline and len(latencies) + errors < MAX_REQUESTS:
                start = time.perf_counter()
                try:
                    async with session.post(
                        url, data=BODY, headers={"content-type": "application/json"}
                    ) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 100 else [0.0] * 99
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "errors": errors,
        "requests": len(latencies) + errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--strategy", default="fastest")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    python = sys.executable
    fleet = subprocess.Popen(
        [
            python,
            "-m",
            "rpcbalancer.sim",
            "--node",
            "a:latency=0.001",
            "--node",
            "b:latency=0.001",
            "--node",
            "c:latency=0.001",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    balancer = None
    try:
        assert fleet.stdout is not None
        urls = json.loads(fleet.stdout.readline())
        port = free_port()
        config = Path(tempfile.mkdtemp()) / "bench.yaml"
        config.write_text(
            json.dumps(
                {
                    "nodes": list(urls.values()),
                    "strategy": args.strategy,
                    "log_level": "warning",
                    "cache": {"enabled": False},  # the strategy's spread: every call to a node
                }
            )
        )
        balancer = subprocess.Popen(
            serve_cmd(config, port),
            env={**os.environ},
            stderr=subprocess.DEVNULL,
        )
        lb = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        results: dict[str, list[dict[str, float]]] = {"node": [], "balancer": []}
        for _ in range(args.rounds):
            results["node"].append(asyncio.run(drive(urls["a"], args.seconds, args.concurrency)))
            results["balancer"].append(asyncio.run(drive(lb, args.seconds, args.concurrency)))
        print(
            f"{args.rounds} rounds x {args.seconds:g}s, {args.concurrency} connections, "
            f"strategy {args.strategy}"
        )
        summary = {}
        for name, runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary[name] = med
            print(
                f"{name:>9}: {med['rps']:8.0f} req/s  p50 {med['p50_ms']:6.2f} ms  "
                f"p99 {med['p99_ms']:6.2f} ms  errors {int(sum(r['errors'] for r in runs))}"
            )
        lb, node = summary["balancer"], summary["node"]
        print(
            f"balancer/node: throughput x{lb['rps'] / node['rps']:.2f}, "
            f"p50 +{lb['p50_ms'] - node['p50_ms']:.2f} ms"
        )
    finally:
        stop_all([fleet, balancer])


if __name__ == "__main__":
    main()
