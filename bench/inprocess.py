"""Our Python per request, in one process, with no sockets: the hit and the miss path.

    .venv/bin/python bench/inprocess.py [--requests 20000] [--repeat 5] [--src OTHER_CHECKOUT]

A real ``Balancer`` and ``Gateway`` behind the real HTTP/1.1 server protocol (``H1Server``),
fed the bytes a client sends and writing into a transport that only counts what it is given;
the nodes are an in-process transport that answers every request at once with one fixed body
(a dynamic global properties answer that is also block 1,000,000). So a figure here is what
rpcbalancer's own code costs per request, parsing and writing included, without the kernel,
the event loop's I/O or the load generator: the part this project can change. Printed: the
minimum over ``--repeat`` runs of microseconds per request, for

* ``hit``: ``condenser_api.get_block [1000000]`` answered from the cache, a new id each time;
* ``miss``: the same call with the cache off, forwarded to a node (router, forwarding, the
  node's answer judged and recorded, the answer built);

``--src DIR`` runs the same program against another checkout (``PYTHONPATH=DIR/src``), in
turn with this one, so the two figures pair (``--src`` is how a change is measured against
main before it). ``--profile`` prints cProfile's top functions of one miss run (interpreted
code only: compiled modules show as one call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOT_BLOCK = 1_000_000
BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"head_block_number":100000000,'
    '"time":"2030-01-01T00:00:00","last_irreversible_block_num":99999980,'
    f'"blockchain_version":"0.23.1","block_id":"{HOT_BLOCK:08x}{"0" * 32}",'
    f'"previous":"{HOT_BLOCK - 1:08x}{"0" * 32}","witness":"w","transactions":[]}}}}'
).encode()
REQUEST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def call(n: int) -> bytes:
    body = b'{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[%d],"id":"b-%d"}' % (
        HOT_BLOCK,
        n,
    )
    return REQUEST % (len(body), body)


class Handle:
    def cancel(self) -> None:
        pass


class InstantNodes:
    """A transport whose every node answers every request at once with :data:`BODY`."""

    def __init__(self) -> None:
        from rpcbalancer.upstream.pool import UpstreamResponse

        self.response = UpstreamResponse(200, (("content-type", "application/json"),), BODY)
        self.handle = Handle()
        self.sent = 0

    def start(self, node: Any, request: Any, timeout: float, done: Any) -> Handle:
        self.sent += 1
        done(self.response, None)
        return self.handle

    async def send(self, node: Any, request: Any, timeout: float) -> Any:
        return self.response

    async def aclose(self) -> None:
        pass


class Sink:
    """The client side of the connection: counts what the server writes."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(requests: int, cache: bool) -> float:
    from rpcbalancer.balancer import Balancer
    from rpcbalancer.config import from_mapping
    from rpcbalancer.proxy.gateway import Gateway
    from rpcbalancer.proxy.server import H1Server

    config = from_mapping(
        {
            "nodes": ["http://127.0.0.1:9", "http://127.0.0.1:10", "http://127.0.0.1:11"],
            "store": "none",
            "max_head_age": 10**9,
            "probe": {"interval": 3600},
            "cache": {"enabled": cache},
            "log_level": "warning",
            "access_log": {"enabled": False},  # as in bench/gateway.py: like nginx's there
        },
        env={},
    )
    nodes = InstantNodes()
    loop = asyncio.get_running_loop()
    async with Balancer(config, transport=nodes, background=True) as balancer:
        gateway = Gateway(balancer)
        server = H1Server(gateway.serve, config.limits, loop)
        sink = Sink()
        server.connection_made(sink)  # type: ignore[arg-type]
        for i in range(50):  # warm: the cache holds the block, the estimates are made
            server.data_received(call(i))
        if cache and b"x-cache: hit" not in sink.last:
            raise SystemExit(f"no cache hit in the warm-up: {sink.last[:400]!r}")
        wires = [call(i) for i in range(requests)]
        before, sent = sink.writes, nodes.sent
        started = time.perf_counter()
        for wire in wires:
            server.data_received(wire)
        elapsed = time.perf_counter() - started
        assert sink.writes - before == requests, "every request answered at once"
        if cache:
            assert nodes.sent == sent, "hits never reach a node"
        server.connection_lost(None)
    return elapsed / requests * 1e6


def run_here(args: argparse.Namespace) -> dict[str, float]:
    import gc

    results: dict[str, float] = {}
    for name, cache in (("hit", True), ("miss", False)):
        best = float("inf")
        for _ in range(args.repeat):
            gc.collect()
            best = min(best, asyncio.run(measure(args.requests, cache)))
        results[name] = best
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        asyncio.run(measure(args.requests, False))
        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--src", type=Path, help="pair with this checkout's src")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    if args.child:
        print(json.dumps(run_here(args)))
        return
    builds = {"this": None} if args.src is None else {"this": None, "other": args.src}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for _ in range(2 if args.src else 1):  # in turn, twice: the pairs share the machine's mood
        for name, src in builds.items():
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = str(src / "src")
            cmd = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            cmd += ["--repeat", str(args.repeat)] + (["--profile"] if args.profile else [])
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            if args.profile:
                print(out.stderr[-6000:], file=sys.stderr)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {name: {k: min(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    for name, figures in best.items():
        where = "this checkout" if builds[name] is None else str(builds[name])
        print(
            f"{name:<6} hit {figures['hit']:6.2f} us/req  miss {figures['miss']:6.2f} us/req  ({where})"
        )
    if "other" in best:
        for path in ("hit", "miss"):
            ratio = best["other"][path] / best["this"][path]
            print(f"{path}: other/this = {ratio:.2f}x (this build is {ratio:.2f}x as fast)")


if __name__ == "__main__":
    main()
