"""The load-aware latency model and the ``fastest`` decisions it makes, on constructed cases
(deterministic clock and random; no sockets)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from rpcbalancer.config import StrategyConfig
from rpcbalancer.fleet.latency import LoadLatency, bucket
from rpcbalancer.fleet.nodes import Node
from rpcbalancer.fleet.policies import PickContext, make_policy

from .helpers import make_nodes, probed


def fastest(**params: object):  # type: ignore[no-untyped-def]
    return make_policy(StrategyConfig(name="fastest", **params), random.Random(5))  # type: ignore[arg-type]


def serve(node: Node, now: float, latency: float, load: int = 1) -> None:
    """``load`` tries go out at ``now`` and each takes ``latency``."""
    for _ in range(load):
        node.begin(now)
    for _ in range(load):
        node.end(now + latency, latency, True, load=load)


def test_buckets_double() -> None:
    assert [bucket(k) for k in (1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 65, 10_000)] == [
        0, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 7,
    ]  # fmt: skip


def test_the_first_answers_are_averaged_then_ten_or_so_decide() -> None:
    model = LoadLatency()
    assert model.predict() is None
    for t, latency in enumerate((0.010, 0.040)):
        model.observe(t * 0.01, latency)
    assert model.predict() == pytest.approx(0.020)  # geometric mean of the two
    for t in range(100):
        model.observe(1 + t * 0.01, 0.030)
    assert model.predict() == pytest.approx(0.030, rel=0.01)


def test_one_tail_answer_moves_the_estimate_a_little_a_real_change_quickly() -> None:
    fast, steady = make_nodes(2)
    for t in range(50):
        serve(fast, t * 0.01, 0.035)
        serve(steady, t * 0.01, 0.050)
    serve(fast, 0.6, 0.140)  # its p99: one answer at four times its median
    p = fastest()
    ctx = PickContext(now=0.7)
    assert fast.predicted(0.7) < 0.045 and p.pick([fast, steady], ctx) is fast
    for t in range(6):  # it really turned slow: a handful of answers say so
        serve(fast, 0.8 + t * 0.01, 0.300)
    assert p.pick([fast, steady], PickContext(now=0.9)) is steady


def test_an_idle_slow_node_does_not_fade_back_into_favour() -> None:
    """Peak EWMA fades an unused node's estimate toward zero until it wins again; the load
    model keeps what it knows until an answer (a probe's, say) says otherwise."""
    fast, slow = make_nodes(2)
    for t in range(20):
        serve(fast, t * 0.01, 0.035)
        serve(slow, t * 0.01, 0.400)
    for t in range(60):  # a minute in which only the fast node serves
        serve(fast, 1.0 + t, 0.035)
    ctx = PickContext(now=61.0)
    assert fastest().pick([fast, slow], ctx) is fast
    assert fastest(model="peak_ewma").pick([fast, slow], ctx) is slow  # faded
    # After a long silence one answer (a probe) counts for most of the level.
    slow.observe_latency(62.0, 0.010)
    assert slow.predicted(62.0) < 0.030


def test_a_node_that_serves_many_at_once_keeps_its_traffic_under_load() -> None:
    """API nodes serve many requests at once: four in flight do not make one four times
    slower. (Peak EWMA x (in flight + 1) sends this burst to the 15 ms node: 3 x 6 > 15.)"""
    fast, medium = make_nodes(2)
    for t in range(40):
        serve(fast, t * 0.1, 0.003, load=1 + t % 6)  # 3 ms whatever its load
        serve(medium, t * 0.1, 0.015)
    for _ in range(5):
        fast.begin(5.0)
    ctx = PickContext(now=5.001)
    assert fast.model.shape(6) == pytest.approx(1.0, abs=0.05)
    assert fastest().pick([fast, medium], ctx) is fast
    assert fastest(model="peak_ewma").pick([fast, medium], ctx) is medium


def test_a_node_that_saturates_sheds_traffic_at_its_load() -> None:
    """A node whose answers slow down with load is priced at the load a request would meet."""
    busy, other = make_nodes(2)
    for t in range(200):
        load = 1 + t % 8
        serve(busy, t * 0.05, 0.010 * load, load=load)  # 10 ms alone, 80 ms with 8 in flight
        serve(other, t * 0.05, 0.030)
    assert busy.model.shape(8) > 4.0
    p = fastest()
    assert p.pick([busy, other], PickContext(now=10.0)) is busy  # alone it is faster
    for _ in range(5):
        busy.begin(10.0)
    assert p.pick([busy, other], PickContext(now=10.001)) is other  # loaded it is not


def test_a_load_found_slow_once_is_tried_again_in_time() -> None:
    model = LoadLatency()
    for t in range(20):
        model.observe(t * 0.01, 0.010, load=1)
    model.observe(0.3, 0.200, load=4)  # one unlucky answer under load
    assert model.shape(4) > 3.0
    for t in range(120):  # two minutes of answers sent alone
        model.observe(1.0 + t, 0.010, load=1)
    assert model.shape(4) < 1.3


def test_an_unseen_load_borrows_the_nearest_lighter_one() -> None:
    model = LoadLatency()
    for t in range(30):
        model.observe(t * 0.01, 0.010, load=1)
        model.observe(t * 0.01, 0.020, load=2)
    assert model.shape(2) > 1.5
    assert model.shape(40) == model.shape(2)  # never seen at 33-64: like at 2
    assert model.predict(40) == model.predict(2)


def test_tries_that_hang_make_a_node_look_slow_before_they_time_out() -> None:
    hanging, other = make_nodes(2)
    for t in range(30):
        serve(hanging, t * 0.01, 0.005)
        serve(other, t * 0.01, 0.008)
    p = fastest()
    assert p.pick([hanging, other], PickContext(now=1.0)) is hanging
    hanging.begin(1.0)  # a try that will never come back
    assert p.pick([hanging, other], PickContext(now=1.004)) is hanging  # young: fine
    assert p.pick([hanging, other], PickContext(now=1.1)) is other  # 100 ms old: avoid
    hanging.cancel(1.0)
    assert hanging.inflight == 0 and hanging.started_sum == 0.0


def test_weight_and_slow_start_divide_the_prediction() -> None:
    a, b = make_nodes(2, weights=[3.0, 1.0])
    serve(a, 0.0, 0.020)
    serve(b, 0.0, 0.010)
    p = fastest()
    assert p.cost(a, 0.1) == pytest.approx(0.020 / 3)
    assert p.pick([a, b], PickContext(now=0.1)) is a
    score, why = p.explain(a, 0.1)
    assert score == pytest.approx(0.020 / 3) and "predicted 20.0 ms" in why


def back_in_slow_start(back_latency: float = 0.005) -> tuple[Node, Node]:
    """Two nodes with a 10 s slow start, answering in ``back_latency`` and 5 ms; the first
    back from down at t=1."""
    back, other = make_nodes(2)
    for node, latency in ((back, back_latency), (other, 0.005)):
        node.breaker.slow_start = 10.0
        serve(node, 0.0, latency)
    back.breaker.recovered(1.0)
    return back, other


def test_a_node_back_from_down_takes_a_trickle_at_once_and_its_share_by_the_end() -> None:
    """A node as fast as the other, in the first moment of its slow start, is weighed at
    its own cost for a ramp's share (10%) of the calls, so it gets about 5% of them (it
    ties half the time), not none; near the end of the ramp about half."""
    back, other = back_in_slow_start()
    p = fastest()
    random.seed(3)  # the ramp's draw uses the module's generator
    early = late = 0
    for _ in range(4000):
        if p.pick([back, other], PickContext(now=1.0)) is back:
            early += 1
            back.record(1.0, 0.005, True)  # its trial tries answer at once
    for _ in range(4000):
        late += p.pick([back, other], PickContext(now=10.9)) is back
    assert 0.03 < early / 4000 < 0.08
    assert 0.4 < late / 4000 < 0.6
    assert back.ramp(1.0) == pytest.approx(0.1)  # the ramp itself is unchanged


def test_a_node_back_is_tried_a_few_times_then_judged_on_its_answers() -> None:
    """A node that comes back looking three times slower than the other (its probe) is
    still sent its few trial tries at once, never more than that in flight; once they
    answer at that latency it gets nothing more."""
    back, other = back_in_slow_start(0.015)
    p = fastest()
    random.seed(4)
    sent = 0
    for _ in range(200):
        if p.pick([back, other], PickContext(now=1.0)) is back:
            back.begin(1.0)
            sent += 1
    assert sent == 5 and back.inflight == 5  # the trials, all out at once, no more
    for _ in range(5):
        back.end(1.015, 0.015, True)
    assert sum(p.pick([back, other], PickContext(now=1.1)) is back for _ in range(1000)) == 0


def test_what_status_shows_is_the_steady_cost_not_the_slow_starts_draws() -> None:
    """/status and `top` read :meth:`explain`: during a slow start its score is the cost
    divided by the whole ramp every time, while picks draw a ramp's share at full cost."""
    back, other = back_in_slow_start()
    p = fastest()
    scores = {p.explain(back, 1.0)[0] for _ in range(200)}
    assert len(scores) == 1 and scores.pop() == pytest.approx(0.005 / 0.1)
    assert p.explain(other, 1.0)[0] == pytest.approx(0.005)


def test_the_hetero_fleet_keeps_its_fast_node_through_bursts() -> None:
    """3 / 15 / 60 ms nodes and bursts of up to 8 requests at once: every request of the
    burst goes to the 3 ms node (its latency does not grow with load)."""
    nodes = make_nodes(3)
    rng = random.Random(1)
    for t in range(300):
        for node, median in zip(nodes, (0.003, 0.015, 0.060), strict=True):
            load = 1 + t % 4 if node is nodes[0] else 1
            serve(node, t * 0.005, median * math.exp(0.2 * rng.gauss(0, 1)), load)
    p = fastest()
    chosen: Counter[int] = Counter()
    now = 2.0
    for _ in range(8):  # a burst: none of them has answered yet
        node = p.pick(nodes, PickContext(now=now))
        node.begin(now)
        chosen[node.index] += 1
    assert chosen == {0: 8}


def test_an_idle_node_known_by_its_probes_is_compared_as_if_it_answered_requests() -> None:
    """Both nodes answer requests in 6.4 ms and probes in 7.3 ms (a probe reads slower).
    While busy, each learns how its probes read; then one goes idle, known by its probes
    only, and is predicted at its requests' latency, not at its probes' (raw, it would
    lose every comparison with the busy one, and never be sent a request again)."""
    idle, busy = make_nodes(2)
    rng = random.Random(3)
    t = 0.0
    for second in range(40):  # both busy: a probe every 2 s, requests between
        for node in (idle, busy):
            for k in range(50):
                serve(node, second + k * 0.02, 0.0064 * math.exp(0.1 * rng.gauss(0, 1)))
            if second % 2 == 0:
                probed(node, at=second + 0.99, latency=0.0073)
    assert math.exp(idle.latencies.probe_skew) == pytest.approx(0.0073 / 0.0064, rel=0.05)
    for second in range(40, 60):  # one idle: only its probes
        t = second + 0.5
        for k in range(50):
            serve(busy, second + k * 0.02, 0.0064 * math.exp(0.1 * rng.gauss(0, 1)))
        if second % 2 == 0:
            probed(idle, at=t, latency=0.0073)
            probed(busy, at=t, latency=0.0073)
    assert idle.predicted(t) == pytest.approx(0.0064, rel=0.05)
    assert idle.predicted(t) == pytest.approx(busy.predicted(t), rel=0.05)


def test_probes_count_as_they_read_until_requests_say_otherwise() -> None:
    """A node never sent a request has no skew: its probes count raw. A skew is bounded
    (4x), whatever a probe took."""
    (node,) = make_nodes(1)
    for second in range(10):
        probed(node, at=float(second), latency=0.010)
    assert node.latencies.probe_skew == 0.0
    assert node.model.level == pytest.approx(0.010)
    for second in range(10, 40):
        for k in range(20):
            serve(node, second + k * 0.01, 0.001)
        probed(node, at=second + 0.5, latency=1.0)  # absurdly slow probes
    assert math.exp(node.latencies.probe_skew) == pytest.approx(4.0, rel=0.05)


def test_an_idle_node_whose_probes_read_far_faster_twice_starts_its_level_over() -> None:
    """A slow link made a node answer in 200 ms, and it was left idle. The link heals: its
    probes read 2 ms. Each probe used to move its level a third of the way (in log), so it
    stayed the slowest for five probes or more; two probes in a row 4x below the level, with
    no request between, start it over from them. One fast probe, or fast probes with a
    request between them, move it as before."""

    def slow_then_idle() -> Node:
        (node,) = make_nodes(1)
        for k in range(30):
            serve(node, k * 0.1, 0.200)
        probed(node, at=4.0, latency=0.200)  # while the link is slow: it reads as requests do
        return node

    node = slow_then_idle()
    probed(node, at=6.0, latency=0.002)
    assert node.model.level is not None and node.model.level > 0.02
    probed(node, at=8.0, latency=0.002)
    assert node.model.level == pytest.approx(0.002, rel=0.01)
    assert node.predicted(8.0) == pytest.approx(0.002, rel=0.01)

    busy = slow_then_idle()
    probed(busy, at=6.0, latency=0.002)
    serve(busy, 7.0, 0.200)  # a request between: it learns from that
    probed(busy, at=8.0, latency=0.002)
    assert busy.model.level is not None and busy.model.level > 0.02

    flapping = slow_then_idle()
    probed(flapping, at=6.0, latency=0.002)
    probed(flapping, at=8.0, latency=0.150)  # not twice in a row
    probed(flapping, at=10.0, latency=0.002)
    assert flapping.model.level is not None and flapping.model.level > 0.02
