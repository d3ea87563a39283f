"""Two balancers and one canary sharing Redis, a node killed mid-run: what clients see.

    .venv/bin/python bench/shared.py [--seconds 30] [--rate 200]

Starts Redis (Debian's redis-server, a free port), three fake nodes (one process each),
`rpcbalancer canary --interval 1s` and two `rpcbalancer serve` with `canary: external`,
all sharing the Redis store. A paced load (``--rate`` requests/s, split over both
balancers) runs for ``--seconds``; node ``a`` is killed (SIGKILL) for the middle third and
started again. Prints the client-side error count and where each balancer sent requests
in each third. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from common import DGP_BODY as BODY  # bench/common.py, beside this file
from common import free_port, serve_cmd, stop_all, wait_port


async def load(urls: list[str], seconds: float, rate: float, on_third: object) -> dict[str, object]:
    errors: list[str] = []
    served: list[Counter[str]] = [Counter(), Counter(), Counter()]
    started = time.monotonic()
    tasks = []
    async with aiohttp.ClientSession() as session:

        async def one(index: int, url: str) -> None:
            third = min(2, int((time.monotonic() - started) / (seconds / 3)))
            try:
                async with session.post(url, data=BODY, timeout=aiohttp.ClientTimeout(10)) as r:
                    doc = await r.json(content_type=None)
                    if r.status != 200 or "result" not in doc:
                        errors.append(f"{r.status} {str(doc)[:120]}")
                    served[third][f"lb{index} -> {r.headers.get('x-rpc-node', '?')}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        total = int(seconds * rate)
        third_done = 0
        for i in range(total):
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now_third = int((time.monotonic() - started) / (seconds / 3))
            if now_third > third_done and now_third <= 2:
                third_done = now_third
                on_third(now_third)  # type: ignore[operator]
            tasks.append(asyncio.create_task(one(i % len(urls), urls[i % len(urls)])))
        await asyncio.gather(*tasks)
    return {"requests": len(tasks), "errors": errors, "served": served}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server is needed (apt-get install redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="rpcb-shared-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    python = sys.executable
    try:
        redis_port = free_port()
        procs["redis"] = subprocess.Popen(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_port(redis_port)
        store = f"redis://127.0.0.1:{redis_port}/0"
        node_ports = {name: free_port() for name in "abc"}

        def start_node(name: str) -> None:
            latency = {"a": 0.003, "b": 0.005, "c": 0.008}[name]
            procs[f"node {name}"] = subprocess.Popen(
                [
                    python,
                    "-m",
                    "rpcbalancer.sim",
                    "--node",
                    f"{name}:latency={latency}",
                    "--port",
                    str(node_ports[name]),
                ],
                stdout=subprocess.DEVNULL,
            )
            wait_port(node_ports[name])

        for name in "abc":
            start_node(name)
        nodes = [f"http://127.0.0.1:{p}" for p in node_ports.values()]
        env = {**os.environ, "RPCBALANCER_NODES": ",".join(nodes)}
        procs["canary"] = subprocess.Popen(
            [python, "-m", "rpcbalancer", "canary", "--interval", "1s", "--store", store],
            env=env,
            stderr=(tmp / "canary.log").open("wb"),
        )
        config = tmp / "lb.yaml"
        config.write_text(
            json.dumps(
                {
                    "store": store,
                    "canary": "external",
                    "store_refresh": 0.5,
                    "log_level": "warning",
                    "cache": {"enabled": False},  # routing by the store: every call to a node
                }
            )
        )
        lb_ports = [free_port(), free_port()]
        for i, port in enumerate(lb_ports):
            procs[f"balancer {i}"] = subprocess.Popen(
                serve_cmd(config, port),
                env=env,
                stderr=(tmp / f"lb{i}.log").open("wb"),
            )
        for port in lb_ports:
            wait_port(port)

        def on_third(third: int) -> None:
            if third == 1:
                procs["node a"].send_signal(signal.SIGKILL)
                procs["node a"].wait()
                print(f"t={args.seconds / 3:.0f}s: node a killed")
            elif third == 2:
                start_node("a")
                print(f"t={2 * args.seconds / 3:.0f}s: node a back")

        result = asyncio.run(
            load([f"http://127.0.0.1:{p}/" for p in lb_ports], args.seconds, args.rate, on_third)
        )
        names = {url: name for name, url in zip("abc", nodes, strict=True)}
        print(
            f"{result['requests']} requests at {args.rate:g}/s over {args.seconds:g}s through "
            f"2 balancers sharing Redis with 1 canary; client-side errors: "
            f"{len(result['errors'])}"
        )  # type: ignore[arg-type]
        for third, counts in enumerate(result["served"]):  # type: ignore[arg-type]
            shown = ", ".join(
                f"{key.split(' -> ')[0]}->{names.get(key.split(' -> ')[1], '?')}: {n}"
                for key, n in sorted(counts.items())
            )
            print(f"  third {third + 1}: {shown}")
        for error in result["errors"][:5]:  # type: ignore[index]
            print("  error:", error)
    finally:
        stop_all(procs.values())
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
