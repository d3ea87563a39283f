from __future__ import annotations

import random
from collections import Counter

import pytest

from rpcbalancer.config import StrategyConfig
from rpcbalancer.fleet.nodes import Node
from rpcbalancer.fleet.policies import POLICIES, PickContext, make_policy
from rpcbalancer.fleet.policies.fastest import Fastest
from rpcbalancer.fleet.policies.race import Race

from .helpers import make_nodes, probed

CTX = PickContext(now=0.0, client_ip="203.0.113.9")


def policy(name: str, seed: int = 7, **params: object):  # type: ignore[no-untyped-def]
    return make_policy(StrategyConfig(name=name, **params), random.Random(seed))  # type: ignore[arg-type]


def picks(name: str, nodes: list[Node], n: int, **params: object) -> Counter[int]:
    p = policy(name, **params)
    return Counter(p.pick(nodes, CTX).index for _ in range(n))


def test_every_configured_strategy_has_a_policy() -> None:
    from rpcbalancer.config import STRATEGIES

    assert set(POLICIES) == set(STRATEGIES)


def test_round_robin_takes_turns_and_skips_absent_nodes() -> None:
    nodes = make_nodes(4)
    p = policy("round_robin")
    assert [p.pick(nodes, CTX).index for _ in range(6)] == [0, 1, 2, 3, 0, 1]
    without_3 = [nodes[0], nodes[1], nodes[3]]
    assert [p.pick(without_3, CTX).index for _ in range(4)] == [3, 0, 1, 3]


def test_weighted_follows_the_weights_smoothly() -> None:
    nodes = make_nodes(3, weights=[5, 3, 1])
    p = policy("weighted")
    sequence = [p.pick(nodes, CTX).index for _ in range(9000)]
    counts = Counter(sequence)
    assert counts == {0: 5000, 1: 3000, 2: 1000}  # exact over whole cycles
    # Smooth: the heavy node never serves more than 2 in a row with weights 5:3:1.
    longest = max(len(run) for run in [*"".join(map(str, sequence)).split("1"), "0"])
    assert longest <= 4
    assert "00000" not in "".join(map(str, sequence))


def test_weight_zero_drains_a_node() -> None:
    nodes = make_nodes(3, weights=[1, 0, 1])
    assert picks("weighted", nodes, 1000)[1] == 0
    assert picks("ip_hash", nodes, 10)[1] == 0


def test_random_is_roughly_uniform_with_a_seeded_rng() -> None:
    counts = picks("random", make_nodes(4), 8000)
    assert all(1800 < counts[i] < 2200 for i in range(4)), counts


def test_least_conn_prefers_idle_nodes() -> None:
    nodes = make_nodes(3)
    nodes[0].inflight, nodes[1].inflight, nodes[2].inflight = 5, 1, 3
    assert picks("least_conn", nodes, 50) == {1: 50}


def test_first_is_ordered_failover() -> None:
    nodes = make_nodes(3)
    assert picks("first", nodes, 10) == {0: 10}
    assert picks("first", nodes[1:], 10) == {1: 10}


def test_ip_hash_is_sticky_and_spreads_clients() -> None:
    nodes = make_nodes(4)
    p = policy("ip_hash")
    clients = [f"198.51.100.{i}" for i in range(400)]
    first = {c: p.pick(nodes, PickContext(0.0, c)).index for c in clients}
    again = {c: p.pick(nodes, PickContext(0.0, c)).index for c in clients}
    assert first == again
    spread = Counter(first.values())
    assert all(60 < spread[i] < 140 for i in range(4)), spread


def test_ip_hash_moves_only_the_clients_of_a_node_that_leaves() -> None:
    nodes = make_nodes(5)
    p = policy("ip_hash")
    clients = [f"2001:db8::{i:x}" for i in range(1000)]
    before = {c: p.pick(nodes, PickContext(0.0, c)).index for c in clients}
    remaining = [n for n in nodes if n.index != 2]
    after = {c: p.pick(remaining, PickContext(0.0, c)).index for c in clients}
    moved = [c for c in clients if before[c] != after[c]]
    assert moved
    assert all(before[c] == 2 for c in moved)
    assert len(moved) == sum(1 for c in clients if before[c] == 2)


def test_max_block_chooses_the_highest_head() -> None:
    nodes = make_nodes(3)
    probed(nodes[0], head=100)
    probed(nodes[1], head=105)
    probed(nodes[2], head=103)
    assert picks("max_block", nodes, 5) == {1: 5}


def test_max_block_breaks_ties_by_latency() -> None:
    nodes = make_nodes(2)
    probed(nodes[0], head=100, latency=0.05)
    probed(nodes[1], head=100, latency=0.01)
    assert picks("max_block", nodes, 3) == {1: 3}


def test_latest_version_chooses_the_newest_version() -> None:
    nodes = make_nodes(3)
    probed(nodes[0], version="0.23.1")
    probed(nodes[1], version="0.23.10")
    probed(nodes[2], version="0.22.9")
    assert picks("latest_version", nodes, 3) == {1: 3}


def test_fastest_sends_most_traffic_to_the_fast_node() -> None:
    nodes = make_nodes(3)
    for node, latency in zip(nodes, (0.003, 0.015, 0.060), strict=True):
        node.observe_latency(0.0, latency)
    counts = picks("fastest", nodes, 3000)
    # Power of two choices: the slowest node only wins a draw against itself, never.
    assert counts[2] == 0
    assert counts[0] > 1900
    assert counts[0] > 2 * counts[1]


def test_fastest_peak_ewma_prices_load_in_flight() -> None:
    nodes = make_nodes(2)
    nodes[0].observe_latency(0.0, 0.010)
    nodes[1].observe_latency(0.0, 0.015)
    nodes[0].inflight = 4  # 0.010 * 5 > 0.015 * 1
    assert picks("fastest", nodes, 20, model="peak_ewma") == {1: 20}


def test_fastest_explores_an_unmeasured_node() -> None:
    nodes = make_nodes(2)
    nodes[0].observe_latency(0.0, 0.010)
    assert picks("fastest", nodes, 5) == {1: 5}


def test_fastest_moves_off_a_node_that_turns_slow() -> None:
    nodes = make_nodes(2)
    p = policy("fastest")
    assert isinstance(p, Fastest)
    nodes[0].observe_latency(0.0, 0.002)
    nodes[1].observe_latency(0.0, 0.004)
    assert p.pick(nodes, CTX) is nodes[0]
    nodes[0].observe_latency(0.5, 0.300)  # one slow answer is enough
    assert p.pick(nodes, PickContext(now=0.5)) is nodes[1]


def test_race_remembers_its_winner_only_for_its_ttl() -> None:
    nodes = make_nodes(3)
    p = policy("race", race_ttl=3.0)
    assert isinstance(p, Race)
    assert p.remembered(nodes, 0.0) is None
    p.remember(nodes[1], 10.0)
    assert p.remembered(nodes, 12.0) is nodes[1]
    assert p.remembered([nodes[0], nodes[2]], 12.0) is None  # winner no longer usable
    assert p.remembered(nodes, 13.5) is None


def test_race_without_ttl_forgets_at_once() -> None:
    nodes = make_nodes(2)
    p = policy("race")
    assert isinstance(p, Race)
    p.remember(nodes[0], 0.0)
    assert p.remembered(nodes, 0.0) is None


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_picks_from_the_nodes_given(name: str) -> None:
    nodes = make_nodes(5)[1:4]
    for node in nodes:
        probed(node)
    got = picks(name, nodes, 200)
    assert set(got) <= {1, 2, 3}
    assert sum(got.values()) == 200


def test_fastest_compares_a_small_fleet_whole_and_samples_a_large_one() -> None:
    nodes = make_nodes(3)
    for node, latency in zip(nodes, (0.003, 0.015, 0.060), strict=True):
        node.observe_latency(0.0, latency)
    assert picks("fastest", nodes, 600) == {0: 600}  # three nodes: every pick sees the best
    two = picks("fastest", nodes, 3000, choices=2)  # power of two: a third never sees it
    assert 800 < two[1] < 1200 and two[2] == 0
    many = make_nodes(20)
    for node in many:
        node.observe_latency(0.0, 0.001 * (node.index + 1))
    # The load model compares a public-sized fleet whole (up to 16)...
    assert picks("fastest", many[:10], 500) == {0: 500}
    # ... samples a larger one, as the classic rule samples three.
    sampled = picks("fastest", many, 5000)
    assert sampled[19] == 0 and 3000 < sampled[0] < 5000 and sampled[1] > 0
    classic = picks("fastest", many[:10], 5000, model="peak_ewma")
    assert classic[9] == 0 and classic[0] > classic[5] > 0
