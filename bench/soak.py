"""Soak: minutes of load with faults, watching the balancer's memory and file descriptors.

    .venv/bin/python bench/soak.py [--minutes 3] [--connections 32]

Starts three fake nodes (one process; node ``b`` dies for 20 s of every minute, node ``c``
answers 5% of requests with 503 pages), one ``rpcbalancer serve`` (SQLite store, access log
to a file, rate limit on), and wrk with a Lua script that mixes good calls, batches, invalid
JSON, invalid requests and notifications. Meanwhile a hostile thread keeps 200 idle
connections and 20 slowloris connections open, re-opening them as the server closes them.
Every 15 s it samples the balancer's RSS and open file descriptors, and once more after
50 s of quiet at the end. Bounded: ``--minutes``
(at most 30). Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, serve_cmd, stop_all, wait_port  # bench/common.py, beside this file

LUA = r"""
local bodies = {
  '{"jsonrpc":"2.0","method":"condenser_api.get_dynamic_global_properties","params":[],"id":1}',
  '{"jsonrpc":"2.0","method":"condenser_api.get_block","params":[1],"id":"b"}',
  '[{"jsonrpc":"2.0","method":"condenser_api.get_config","id":1},{"jsonrpc":"2.0","method":"condenser_api.get_version","id":2}]',
  '{not json',
  '{"jsonrpc":"2.0","id":3}',
  '{"jsonrpc":"2.0","method":"condenser_api.get_version"}',
  '[1, {"jsonrpc":"2.0","method":"condenser_api.get_version","id":4}]',
}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/", {["Content-Type"] = "application/json"}, bodies[(n % #bodies) + 1])
end
"""


def sample(pid: int) -> tuple[float, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss / 1024.0, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def hostile(port: int, stop: threading.Event) -> None:
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    while not stop.is_set():
        idle = [s for s in idle if s.fileno() >= 0]
        while len(idle) < 200:
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        for sock in list(slow):
            try:
                sock.send(b"X")
            except OSError:
                slow.remove(sock)
                sock.close()
        while len(slow) < 20:
            with contextlib.suppress(OSError):
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.send(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
        stop.wait(1.0)
    for sock in idle + slow:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    seconds = max(30.0, min(args.minutes, 30.0) * 60.0)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="rpcbalancer-soak-") as folder:
        tmp = Path(folder)
        first = free_port()
        script = [[t + 20, "b", {"dead": True}] for t in range(0, int(seconds), 60)]
        script += [[t + 40, "b", {"dead": False}] for t in range(0, int(seconds), 60)]
        fleet = subprocess.Popen(
            [sys.executable, "-m", "rpcbalancer.sim", "--port", str(first),
             "--node", "a:latency=0.002", "--node", "b:latency=0.004",
             "--node", "c:latency=0.003,fail_rate=0.05", "--script", json.dumps(script)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(fleet)
        assert fleet.stdout is not None
        urls = list(json.loads(fleet.stdout.readline()).values())
        port = free_port()
        config = tmp / "soak.yaml"
        config.write_text(
            json.dumps(
                {
                    "nodes": urls,
                    "store": f"sqlite:///{tmp / 'health.db'}",
                    "probe": {"interval": 2},
                    "log_level": "warning",
                    "access_log": {"path": str(tmp / "access.log")},
                    "rate_limit": {"rate": 100000, "burst": 100000},
                    "limits": {"request_timeout": 5, "idle_timeout": 20},
                }
            )
        )
        balancer = subprocess.Popen(serve_cmd(config, port), stdout=subprocess.DEVNULL)
        procs.append(balancer)
        wait_port(port)
        (tmp / "mix.lua").write_text(LUA)
        stop = threading.Event()
        bully = threading.Thread(target=hostile, args=(port, stop), daemon=True)
        time.sleep(3)
        samples = [(0.0, *sample(balancer.pid))]
        started = time.monotonic()
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{int(seconds)}s", "--latency",
             "-s", str(tmp / "mix.lua"), f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(wrk)  # type: ignore[arg-type]
        bully.start()
        try:
            while wrk.poll() is None:
                time.sleep(15)
                samples.append((time.monotonic() - started, *sample(balancer.pid)))
            report = wrk.stdout.read() if wrk.stdout else ""
        finally:
            stop.set()
            bully.join(10)
        time.sleep(2)
        samples.append((time.monotonic() - started, *sample(balancer.pid)))
        time.sleep(48)  # idle: the node pool closes what it no longer needs (idle_ttl 30 s)
        samples.append((time.monotonic() - started, *sample(balancer.pid)))
        stop_all(procs)
        lines = (tmp / "access.log").read_text().count("\n")
    print(report)
    print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>6}")
    for t, rss, fds in samples:
        print(f"{t:7.0f} {rss:8.1f} {fds:6d}")
    print(f"access log lines: {lines}")
    steady = samples[2:-2] if len(samples) > 5 else samples
    print(
        f"RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB (max under load "
        f"{max(s[1] for s in steady):.1f}); fds {samples[0][2]} -> {samples[-2][2]} when the "
        f"load and the hostile connections ended, {samples[-1][2]} after 50 s idle"
    )


if __name__ == "__main__":
    main()
