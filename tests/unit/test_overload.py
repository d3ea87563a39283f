"""The worker's admission by load (proxy/overload.py), on a constructed clock: when a
standing queue starts and ends the shedding, the cap on requests in flight, the refusal."""

from __future__ import annotations

import itertools
import math

import orjson
import pytest

from rpcbalancer.config import OverloadConfig
from rpcbalancer.proxy.overload import BACK_OFF, STEP, TICK, Guard


def guard(**config: float) -> Guard:
    return Guard(OverloadConfig(**config), {})  # type: ignore[arg-type]


def test_a_burst_passes_a_standing_queue_sheds_a_share_steered_by_the_lag() -> None:
    g = guard(max_queue_time=0.02, interval=0.1)
    g.observe(1.00, 0.05)  # late since 0.95
    g.observe(1.03, 0.03)
    assert not g.shedding  # 80 ms above: a burst so far
    assert g.admit() is None
    g.observe(1.06, 0.03)  # 110 ms above: a standing queue
    assert g.shedding and g.counts["sheds"] == 1
    assert g.share == pytest.approx(BACK_OFF)
    answers = [g.admit() for _ in range(100)]
    refused = [k for k, a in enumerate(answers) if a is not None]
    assert abs(len(refused) - 100 * (1 - BACK_OFF)) < 1.5
    assert all(b - a >= int(1 / (1 - BACK_OFF)) - 1 for a, b in itertools.pairwise(refused))
    assert g.counts["refused_queue"] == len(refused)
    g.observe(1.07, 0.02)  # still late: admit less
    assert g.share == pytest.approx(BACK_OFF**2) and g.counts["sheds"] == 1
    more = sum(g.admit() is not None for _ in range(1000))
    assert abs(more - 1000 * (1 - BACK_OFF**2)) < 1.5
    g.observe(1.15, 0.06)  # three times the aim late: backs off three times over
    assert g.share == pytest.approx(BACK_OFF**5)
    ticks = 0
    while g.shedding:  # on time: a little more each reading, until all are admitted
        g.observe(1.16 + ticks * 0.01, 0.001)
        ticks += 1
    assert ticks == math.ceil((1 - BACK_OFF**5) / STEP - 1e-9) and g.share == 1.0
    assert all(g.admit() is None for _ in range(100))
    g.observe(2.0, 0.05)  # late again: a new queue must stand a whole interval
    assert not g.shedding


def test_the_default_aim_is_codels_5_ms_held_for_100_ms() -> None:
    def sheds(lags: list[float]) -> bool:
        g, now = guard(), 1.0  # the defaults
        for lag in lags:  # a reading each tick, as late as given
            now += TICK + lag
            g.observe(now, lag)
        return g.shedding

    assert sheds([0.006] * 12)  # 6 ms late for over 100 ms: a standing queue
    assert not sheds([0.004] * 50)  # 4 ms late is within the aim, however long
    assert not sheds([0.006] * 6 + [0.001] + [0.006] * 6)  # one reading on time: a burst


def test_the_share_never_falls_to_nothing() -> None:
    g = guard(max_queue_time=0.02, interval=0.1)
    g.observe(1.0, 0.2)
    for k in range(100):
        g.observe(1.01 + k * 0.01, 0.5)
    assert g.shedding and g.share == pytest.approx(0.01)
    assert sum(g.admit() is None for _ in range(1000)) == 10


def test_one_long_stall_counts_from_when_the_tick_was_due() -> None:
    g = guard(max_queue_time=0.02, interval=0.1)
    g.observe(5.0, 0.3)  # the loop did not run for 300 ms
    assert g.shedding


def test_the_cap_on_requests_in_flight_and_the_refusal() -> None:
    g = guard(max_inflight=2, retry_after=3)
    assert g.admit() is None and g.admit() is None
    refusal = g.admit()
    assert refusal is not None
    assert refusal.status == 503
    assert ("retry-after", "3") in refusal.headers
    body = orjson.loads(refusal.body)
    assert body["id"] is None and body["error"]["code"] < 0
    assert "Overloaded" in body["error"]["message"]
    assert g.counts == {"refused_inflight": 1}
    g.done()
    assert g.admit() is None and g.inflight == 2


def test_zero_turns_each_rule_off() -> None:
    g = guard(max_inflight=0, max_queue_time=0)
    for _ in range(10_000):
        assert g.admit() is None
    g.observe(1.0, 5.0)
    assert not g.shedding


def test_a_reload_takes_the_new_limits_and_carries_the_counts_over() -> None:
    g = guard(max_inflight=1)
    assert g.admit() is None and g.admit() is not None
    counts: dict[str, int] = {}
    g.configure(OverloadConfig(max_inflight=3, retry_after=7), counts)
    assert g.counts is counts and counts["refused_inflight"] == 1
    assert g.admit() is None and g.admit() is None and g.admit() is not None
    assert ("retry-after", "7") in g.refusal.headers
