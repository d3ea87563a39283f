"""Throughput: rpcbalancer beside nginx and HAProxy, in one run, to the same nodes.

    .venv/bin/python bench/throughput.py [--seconds 10] [--connections 50] [--workers 1]

The nodes are three nginx server blocks answering fixed JSON from memory (a jussi status
for GET, a dynamic-global-properties answer for POST), so the nodes cost next to nothing.
In front of them, each in turn: rpcbalancer (`--workers` processes), nginx (one worker,
round-robin, keep-alive to the nodes) and HAProxy (one thread, round-robin, connection
reuse); and, as the floor, one node called directly. Each balancer is pinned to CPU 1 and
the load generator (wrk, closed loop, POST JSON-RPC) and the nodes to CPU 0, the same for
all. Printed per target: req/s, p50/p99 latency, CPU time per request and peak RSS of the
balancer, p50/p99 with one connection (latency without queueing), plus the ratios the
data-plane issue asks for; ``--profile`` adds py-spy's top frames of rpcbalancer under the
load. Needs wrk, nginx and haproxy (Debian packages) and py-spy for ``--profile``. Every
process is stopped by its PID; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, serve_cmd, stop_all, wait_port  # bench/common.py, beside this file

GET_BODY = '{"status":"OK","jussi_num":100000000}'
POST_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"head_block_number":100000000,'
    '"time":"2030-01-01T00:00:00","last_irreversible_block_num":99999980,'
    '"blockchain_version":"0.23.1"}}'
)
LUA = """wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","method":"condenser_api.get_dynamic_global_properties","params":[],"id":1}'
wrk.headers["Content-Type"] = "application/json"
"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    result = [int(k) for k in kids]
    for kid in list(result):
        result += children(kid)
    return result


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                status = Path(f"/proc/{p}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match:
                total += int(match.group(1))
    return total / 1024


def run_wrk(url: str, seconds: float, connections: int, lua: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?):?\s*(\d+)", out)
    )

    def pct(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "requests": total, "errors": errors}


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the balancer (and its workers) for the run, as collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 1))]
    cmd += ["--rate", "250", "--nonblocking", "--subprocesses", "--format", "raw"]
    return subprocess.Popen(
        [*cmd, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def print_profile(path: Path, top: int = 20) -> None:
    """Self time per function, and inclusive time per rpcbalancer function, as shares of
    the samples (samples of an idle loop are not taken)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        print("py-spy wrote no profile (is py-spy installed, and may it trace processes?)")
        return
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*/)?([^/]+):\d+\)", r" (\2)", f) for f in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in {
            f for f, raw in zip(frames, stack.split(";")[1:], strict=True) if "rpcbalancer/" in raw
        }:
            inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"py-spy, rpcbalancer, {title} time ({total} samples):")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * n / total:5.1f}%  {frame}")


def write_configs(
    tmp: Path, node_ports: list[int], ports: dict[str, int], extra: dict[str, object]
) -> Path:
    """The nodes' nginx (``nodes.conf``: fixed JSON from memory), nginx and HAProxy in front
    of them (``proxy.conf``, ``haproxy.cfg``: round-robin, keep-alive), and rpcbalancer's
    configuration (returned; ``extra`` merged into it)."""
    servers = "\n".join(
        f"""  server {{ listen 127.0.0.1:{p}; access_log off;
    location / {{ default_type application/json;
      if ($request_method = POST) {{ return 200 '{POST_BODY}'; }}
      return 200 '{GET_BODY}'; }} }}"""
        for p in node_ports
    )
    upstream = "\n".join(f"    server 127.0.0.1:{p};" for p in node_ports)
    common = f"pid {tmp}/%s.pid; error_log {tmp}/%s.err; daemon off; worker_processes 1;\nevents {{ worker_connections 4096; }}\n"
    (tmp / "nodes.conf").write_text(common % ("nodes", "nodes") + f"http {{\n{servers}\n}}\n")
    (tmp / "proxy.conf").write_text(
        common % ("proxy", "proxy")
        + f"""http {{
  access_log off;
  upstream nodes {{
{upstream}
    keepalive 128;
  }}
  server {{ listen 127.0.0.1:{ports["nginx"]};
    location / {{ proxy_pass http://nodes; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_next_upstream error timeout http_503; }} }}
}}
"""
    )
    backends = "\n".join(f"  server n{i} 127.0.0.1:{p}" for i, p in enumerate(node_ports))
    (tmp / "haproxy.cfg").write_text(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
  http-reuse always
frontend fe
  bind 127.0.0.1:{ports["haproxy"]}
  default_backend nodes
backend nodes
  balance roundrobin
{backends}
""")
    config = tmp / "rpcbalancer.yaml"
    config.write_text(
        json.dumps(
            {
                "nodes": [f"http://127.0.0.1:{p}" for p in node_ports],
                "log_level": "warning",
                "max_head_age": 10**9,
                "probe": {"interval": 5},
                # Like nginx and HAProxy here (access_log off); --set turns it on to measure it.
                "access_log": {"enabled": False, "path": str(tmp / "access.log")},
                # Proxying is measured: every request to a node (the answer cache, on by
                # default, would answer these repeats; bench/gateway.py measures hits).
                "cache": {"enabled": False},
                **extra,
            }
        )
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--cpus",
        default="1",
        help="CPUs the balancers are pinned to (wrk and the nodes take CPU 0)",
    )
    parser.add_argument(
        "--rss-every",
        type=float,
        default=5.0,
        help="seconds between RSS samples of each balancer during its run",
    )
    parser.add_argument(
        "--set",
        default="{}",
        help='JSON merged into the rpcbalancer config, e.g. \'{"hedge": {"enabled": false}}\'',
    )
    parser.add_argument("--only", help="comma-separated targets to run (default: all)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run bench/floor.py's bare proxy and rpcbalancer's HTTP layers alone",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample rpcbalancer with py-spy during its run and print its top frames",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light haproxy util-linux)")

    tmp = Path(tempfile.mkdtemp(prefix="rpcb-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    node_ports = [free_port() for _ in range(3)]
    ports = {"nginx": free_port(), "haproxy": free_port(), "rpcbalancer": free_port()}
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], cpu: int | str, **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["taskset", "-c", str(cpu), *cmd], **kw
        )
        procs.append(proc)
        return proc

    config = write_configs(tmp, node_ports, ports, json.loads(args.set))
    try:
        start(["nginx", "-c", str(tmp / "nodes.conf"), "-p", str(tmp)], 0)
        for p in node_ports:
            wait_port(p)
        targets = {
            "node (direct)": (None, node_ports[0]),
            "rpcbalancer": (
                start(
                    serve_cmd(config, ports["rpcbalancer"], "--workers", str(args.workers)),
                    args.cpus,
                ),
                ports["rpcbalancer"],
            ),
            "nginx": (
                start(["nginx", "-c", str(tmp / "proxy.conf"), "-p", str(tmp)], args.cpus),
                ports["nginx"],
            ),
            "haproxy": (
                start(["haproxy", "-f", str(tmp / "haproxy.cfg")], args.cpus),
                ports["haproxy"],
            ),
        }
        if args.floor:  # the data plane's floor on the same stack (see floor.py)
            floor = Path(__file__).with_name("floor.py")
            urls = [f"http://127.0.0.1:{p}" for p in node_ports]
            for mode in ("bare", "layers"):
                port = free_port()
                cmd = [sys.executable, str(floor), mode, "--port", str(port), *urls]
                targets[f"floor: {mode}"] = (start(cmd, args.cpus), port)
        if args.only:
            wanted = set(args.only.split(","))
            targets = {k: v for k, v in targets.items() if k in wanted or k == "node (direct)"}
        for _, port in targets.values():
            wait_port(port)
        time.sleep(1.0)
        results: dict[str, dict[str, float]] = {}
        for name, (proc, port) in targets.items():
            url = f"http://127.0.0.1:{port}/"
            run_wrk(url, 2, args.connections, lua)  # warm-up
            pids = [proc.pid] if proc else []
            before = cpu_seconds(pids)
            samples: list[float] = []
            stop = threading.Event()

            def sample(
                pids: list[int] = pids, samples: list[float] = samples, stop: threading.Event = stop
            ) -> None:
                while not stop.wait(args.rss_every):
                    samples.append(rss_mb(pids))

            sampler = threading.Thread(target=sample, daemon=True)
            if pids:
                sampler.start()
            # The bare node is only the floor for the latency comparison: 10 s at most.
            seconds = args.seconds if pids else min(args.seconds, 10.0)
            spy = None
            if args.profile and name == "rpcbalancer" and proc is not None:
                spy = start_profile(proc.pid, seconds, tmp / "profile.txt")
            result = run_wrk(url, seconds, args.connections, lua)
            if spy is not None:
                spy.wait(timeout=60)
                print_profile(tmp / "profile.txt")
            stop.set()
            if pids:
                sampler.join()
                if samples:
                    print(
                        f"{name}: RSS MB during the run, every {args.rss_every:g}s: "
                        + " ".join(f"{s:.1f}" for s in samples)
                    )
            spent = cpu_seconds(pids) - before
            result["cpu_us_per_req"] = spent / result["requests"] * 1e6 if pids else float("nan")
            result["rss_mb"] = rss_mb(pids) if pids else float("nan")
            # Latency without queueing: one connection, one request at a time.
            alone = run_wrk(url, min(args.seconds, 5.0), 1, lua)
            result["p50_alone"], result["p99_alone"] = alone["p50"], alone["p99"]
            results[name] = result
        print(
            f"wrk: 1 thread, {args.connections} connections, {args.seconds:g}s, POST JSON-RPC; "
            f"balancers pinned to CPU {args.cpus}, wrk and nodes to CPU 0; rpcbalancer workers: {args.workers}"
        )
        print(
            f"{'target':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
            f"{'RSS MB':>8} {'errors':>7} {'1-conn p50':>11} {'1-conn p99':>11}"
        )
        for name, r in results.items():
            print(
                f"{name:<14} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                f"{r['cpu_us_per_req']:>11.1f} {r['rss_mb']:>8.1f} {int(r['errors']):>7} "
                f"{r['p50_alone']:>11.3f} {r['p99_alone']:>11.3f}"
            )
        rb, node = results.get("rpcbalancer"), results["node (direct)"]
        if rb is not None:
            ratios = [
                f"rpcbalancer/{peer} throughput: {rb['rps'] / results[peer]['rps']:.2f}x"
                for peer in ("nginx", "haproxy")
                if peer in results
            ]
            added = f"added p50 over the node: {rb['p50'] - node['p50']:+.2f} ms"
            quiet = f"one connection: {1000 * (rb['p50_alone'] - node['p50_alone']):+.0f} us"
            print("; ".join([*ratios, added, quiet]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        stop_all(procs, grace=15)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
