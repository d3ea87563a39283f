"""What choosing a node costs on the hot path: microseconds per ``fastest`` pick.

    .venv/bin/python bench/pick.py [--picks 200000]

Fleets of 3, 8 and 16 nodes with learned latencies (some requests in flight, so the mean-age
bound is computed too), the load model beside the classic peak-EWMA rule and ``round_robin``
(the cheapest policy, as a floor), each timed over ``--picks`` picks, best of five runs. The
answers each node gives between picks (``Node.end``: the model's update) are timed too.
"""

from __future__ import annotations

import argparse
import random
import time

from rpcbalancer.config import NodeConfig, StrategyConfig
from rpcbalancer.fleet.nodes import Node
from rpcbalancer.fleet.policies import PickContext, make_policy


def fleet(count: int) -> list[Node]:
    rng = random.Random(count)
    nodes = [Node(i, NodeConfig(url=f"http://n{i}.test")) for i in range(count)]
    for node in nodes:
        median = rng.uniform(0.03, 0.4)
        for t in range(200):
            load = 1 + t % 4
            node.observe_latency(t * 0.01, median * rng.lognormvariate(0, 0.6), load)
        for _ in range(rng.randint(0, 3)):
            node.begin(1.9)
    return nodes


def best_of(runs: int, fn: object, count: int) -> float:
    """Seconds per call, the best of ``runs`` runs of ``count`` calls."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(count)  # type: ignore[operator]
        timings.append((time.perf_counter() - start) / count)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--picks", type=int, default=200_000)
    args = parser.parse_args()
    ctx = PickContext(now=2.0)
    print("| nodes | fastest (load) | fastest (peak_ewma) | round_robin | Node.end |")
    print("|---|---|---|---|---|")
    for count in (3, 8, 16):
        nodes = fleet(count)
        cells = []
        for params in (
            StrategyConfig(name="fastest"),
            StrategyConfig(name="fastest", model="peak_ewma"),
            StrategyConfig(name="round_robin"),
        ):
            policy = make_policy(params, random.Random(1))

            def run(n: int, pick=policy.pick, nodes=nodes) -> None:  # type: ignore[no-untyped-def]
                for _ in range(n):
                    pick(nodes, ctx)

            cells.append(f"{best_of(5, run, args.picks) * 1e6:.2f} µs")
        node = nodes[0]

        def answer(n: int, node: Node = node) -> None:
            for i in range(n):
                load = node.begin(2.0 + i * 1e-6)
                node.end(2.001 + i * 1e-6, 0.001, True, load=load)

        cells.append(f"{best_of(5, answer, args.picks) * 1e6:.2f} µs")
        print(f"| {count} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
