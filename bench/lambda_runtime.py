"""Lambda figures: cold-start import time, zip size, and per-invocation overhead through the
runtime loop.

    .venv/bin/python bench/lambda_runtime.py [--invocations 2000] [--imports 15]

* Import: ``python -X importtime`` of ``rpcbalancer.aws_lambda`` from the unpacked zip, in
  fresh processes of the runtime's Python (3.12 when this machine has it), with the zip's
  byte-code and without it (what a zip built without a matching interpreter costs); boto3's
  import, which most Python functions pay, is measured beside it as the peer.
* Size: the arm64 zip ``rpcbalancer lambda package`` builds for the template.
* Cold start: from starting the runtime process to the first invocation's answer.
* Invocations: the zip run by awslambdaric against the loopback Runtime API
  (``rpcbalancer.sim.lambda_api``), invoked over HTTP one after another, each an HTTP API
  event for one JSON-RPC call to a fake node. Peers in the same run: an empty handler (the
  runtime loop's own cost) and a naive proxy handler (urllib to the same node, new connection
  per call, what a hand-written Lambda proxy does), and the node called directly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

from common import DGP_BODY

from rpcbalancer.hosts.lambda_package import build, find_python
from rpcbalancer.sim import Behaviour, FleetThread
from rpcbalancer.sim.lambda_api import LambdaFunction, install_runtime

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lambda"
EVENT = FIXTURES / "http-api.json"
SCHEDULE = FIXTURES / "schedule.json"
RACE = "rpcbalancer, no store (races each request)"
STORE = "rpcbalancer, canary records in SQLite"

PEERS = """
import json, os
from urllib.request import Request, urlopen


def empty(event, context):
    return {"statusCode": 200, "body": "{}"}


def naive(event, context):
    import base64
    body = event["body"]
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    request = Request(os.environ["NODE"], data=body.encode(),
                      headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=10) as response:
        return {"statusCode": response.status, "body": response.read().decode(),
                "headers": {"content-type": "application/json"}}
"""


def import_ms(python: str, root: Path, module: str, runs: int, extra_path: str = "") -> float:
    import subprocess

    times = []
    for _ in range(runs):
        code = f"import sys; sys.path[:0] = {[str(root), *filter(None, [extra_path])]!r}; import {module}"
        done = subprocess.run(
            [python, "-S", "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        )
        last = [line for line in done.stderr.splitlines() if line.endswith(f"| {module}")][-1]
        times.append(int(last.split("|")[1]) / 1000.0)
    return statistics.median(times)


def latencies(call: Any, n: int) -> dict[str, float]:
    for _ in range(min(50, n)):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[int(len(samples) * 0.99) - 1],
        "mean": statistics.fmean(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=2000)
    parser.add_argument("--imports", type=int, default=15)
    args = parser.parse_args()
    n = max(10, min(args.invocations, 100_000))

    python = find_python("3.12") or sys.executable
    version = "3.12" if python != sys.executable else "{}.{}".format(*sys.version_info[:2])
    with tempfile.TemporaryDirectory(prefix="rpcbalancer-bench-") as tmp:
        work = Path(tmp)
        arm = build(work / "arm64.zip", arch="arm64", python="3.12")
        local = build(work / "local.zip", arch="x86_64", python=version, compile_with=python)
        bare = build(work / "bare.zip", arch="x86_64", python=version, byte_code=False)
        roots = {}
        for name, built in (("compiled", local), ("bare", bare)):
            roots[name] = work / name
            with zipfile.ZipFile(built.path) as archive:
                archive.extractall(roots[name])
        site = work / "runtime"
        install_runtime(site, version)
        (roots["compiled"] / "peers.py").write_text(PEERS)

        imports = {
            "rpcbalancer.aws_lambda (zip with byte-code)": import_ms(
                python, roots["compiled"], "rpcbalancer.aws_lambda", args.imports
            ),
            "rpcbalancer.aws_lambda (zip without byte-code)": import_ms(
                python, roots["bare"], "rpcbalancer.aws_lambda", args.imports
            ),
            "boto3 (peer: what most Python functions import)": import_ms(
                python, site, "boto3", args.imports
            ),
        }

        results: dict[str, Any] = {}
        cold: dict[str, float] = {}
        event = json.loads(EVENT.read_text())
        with FleetThread({"node": Behaviour(latency=0.0)}) as fleet:
            node = fleet.urls[0]

            def direct() -> None:
                request = Request(node, data=DGP_BODY, headers={"Content-Type": "application/json"})
                with urlopen(request, timeout=10) as response:
                    response.read()

            results["node called directly (urllib)"] = latencies(direct, n)
            store = f"sqlite:///{work / 'health.db'}"
            canary = LambdaFunction(
                "rpcbalancer.aws_lambda.canary_handler",
                {"RPCBALANCER_NODES": node, "RPCBALANCER_STORE": store},
                python=python,
                task_root=roots["compiled"],
                runtime_site=site,
                log=work / "canary.log",
            )
            try:
                summary, failed = canary.invoke(json.loads(SCHEDULE.read_text()))
                assert not failed and summary["ok"] == 1, summary
            finally:
                canary.stop()
            for label, handler, env in (
                ("empty handler (runtime loop alone)", "peers.empty", {}),
                ("naive proxy handler (urllib per call)", "peers.naive", {}),
                (RACE, "rpcbalancer.aws_lambda.handler", {}),
                (STORE, "rpcbalancer.aws_lambda.handler", {"RPCBALANCER_STORE": store}),
            ):
                started = time.perf_counter()
                fn = LambdaFunction(
                    handler,
                    {"RPCBALANCER_NODES": node, "NODE": node, **env},
                    python=python,
                    task_root=roots["compiled"],
                    runtime_site=site,
                    log=work / f"{handler}.log",
                )
                try:
                    result, failed = fn.invoke(event)
                    cold[label] = (time.perf_counter() - started) * 1000
                    assert not failed and result["statusCode"] == 200, result
                    results[label] = latencies(lambda fn=fn: fn.invoke(event), n)
                finally:
                    fn.stop()

    print(f"runtime python: {python} ({version})")
    print(
        f"arm64 zip: {arm.size / 1e6:.2f} MB ({arm.files} files; byte-code: {bool(arm.compiled_with)})"
    )
    print("\nimport time, median of", args.imports, "fresh processes:")
    for label, ms in imports.items():
        print(f"  {label:<52} {ms:7.1f} ms")
    print("\ncold start: runtime process started to first answer (one each):")
    for label, ms in cold.items():
        print(f"  {label:<52} {ms:7.1f} ms")
    print(f"\n{n} invocations each, one after another (ms):")
    print(f"  {'':<42} {'p50':>7} {'p99':>7} {'mean':>7}")
    for label, row in results.items():
        print(f"  {label:<42} {row['p50']:7.2f} {row['p99']:7.2f} {row['mean']:7.2f}")
    floor = results["empty handler (runtime loop alone)"]["p50"]
    node_ms = results["node called directly (urllib)"]["p50"]
    naive = results["naive proxy handler (urllib per call)"]["p50"]
    print("\nown cost per invocation, p50 less the runtime loop and the node's answer:")
    for label in ("naive proxy handler (urllib per call)", RACE, STORE):
        ours = results[label]["p50"]
        print(f"  {label:<42} {ours - floor - node_ms:6.2f} ms  ({ours / naive:.2f}× naive p50)")


if __name__ == "__main__":
    main()
