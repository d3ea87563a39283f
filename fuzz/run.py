"""Coverage-guided fuzzing with atheris, one target at a time, bounded in time or runs.

    .venv/bin/python fuzz/run.py jsonrpc_parse --seconds 60
    .venv/bin/python fuzz/run.py all --seconds 120        # each target in turn
    .venv/bin/python fuzz/run.py config_load --runs 5000   # what the test suite does

Inputs that crash are written to fuzz/findings/<target>/ by libFuzzer (``-artifact_prefix``);
the seeds in fuzz/corpus/<target>/ start each run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(target: str, args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["rpcbalancer"]):
        import targets

    atheris.Setup([sys.argv[0], *args], targets.TARGETS[target])
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", help="jsonrpc_parse, config_load, lambda_event or all")
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(args.target, rest)
        return 0
    names = (
        ["jsonrpc_parse", "config_load", "lambda_event"] if args.target == "all" else [args.target]
    )
    status = 0
    for name in names:
        corpus = HERE / "corpus" / name
        findings = HERE / "findings" / name
        findings.mkdir(parents=True, exist_ok=True)
        work = findings / "corpus"
        work.mkdir(exist_ok=True)
        limits = []
        if args.seconds:
            limits.append(f"-max_total_time={args.seconds}")
        if args.runs:
            limits.append(f"-runs={args.runs}")
        command = [
            sys.executable, str(Path(__file__)), name, "--child",
            f"-artifact_prefix={findings}/", "-max_len=4096", "-rss_limit_mb=1024",
            "-timeout=10", *limits, str(work), str(corpus),
        ]  # fmt: skip
        print(f"fuzzing {name}: {' '.join(limits) or 'until stopped'}", flush=True)
        done = subprocess.run(command, cwd=HERE, check=False)
        status = status or done.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
