from __future__ import annotations

import pytest

from rpcbalancer.fleet.nodes import Health, parse_version

from .helpers import fleet, make_nodes, probed


def test_peak_ewma_jumps_up_and_decays_down() -> None:
    (node,) = make_nodes(1)
    node.observe_latency(0.0, 0.010)
    node.observe_latency(0.1, 0.200)
    assert node.ewma == pytest.approx(0.200)  # a slow answer is believed at once
    node.observe_latency(0.2, 0.010)
    assert 0.190 < node.ewma < 0.200  # a fast one only slowly
    for t in range(1, 60):
        node.observe_latency(0.2 + t, 0.010)
    assert node.ewma == pytest.approx(0.010, rel=0.1)


def test_an_unused_node_estimate_fades() -> None:
    (node,) = make_nodes(1)
    node.observe_latency(0.0, 0.100)
    assert node.latency(0.0) == pytest.approx(0.100)
    assert node.latency(10.0, decay=10.0) == pytest.approx(0.100 / 2.718281828, rel=1e-3)
    assert node.latency(100.0) < 0.0001


def test_fast_failures_do_not_look_fast() -> None:
    (node,) = make_nodes(1)
    node.begin(0.999)
    node.end(1.0, 0.001, False, error="reset", penalty=5.0)
    assert node.ewma == pytest.approx(5.0)
    assert node.inflight == 0
    assert node.failures == 1
    assert node.last_error == "reset"
    assert node.percentile(0.5) is None  # failures do not enter the latency percentiles


def test_breaker_ejects_after_consecutive_failures_with_growing_cooldown() -> None:
    f = fleet(2, breaker_failures=3, breaker_cooldown=10.0)
    node = f.nodes[0]
    for _ in range(2):
        node.record(0.0, 0.01, False, health=f.health)
    assert f.exclusion(node, 0.0) is None
    node.record(0.0, 0.01, False, error="timeout", health=f.health)
    reason = f.exclusion(node, 1.0)
    assert reason is not None
    assert "ejected after 3 consecutive failures" in reason
    assert f.exclusion(node, 10.5) is None  # cooldown over: a trial
    node.record(10.5, 0.01, False, health=f.health)  # the trial fails: ejected again, longer
    assert f.exclusion(node, 10.5 + 15) is not None
    assert f.exclusion(node, 10.5 + 20.5) is None
    node.record(31.0, 0.01, True, health=f.health)
    assert node.breaker.consecutive_failures == 0
    for _ in range(3):  # much later, after a clean spell: back to the base cooldown
        node.record(1000.0, 0.01, False, health=f.health)
    assert node.breaker.ejected_until == 1010.0


@pytest.mark.parametrize(
    ("probe", "health", "expected"),
    [
        ({"ok": False, "error": "head: connection refused"}, {}, "down: head: connection refused"),
        ({"head": 880}, {"max_block_lag": 100}, "120 blocks behind the best node (max 100)"),
        ({"head_age": 500.0}, {}, "head block is 500s old"),
        (
            {"version": "0.22.5"},
            {"min_version": (0, 23, 0)},
            "version 0.22.5 is below min_version 0.23.0",
        ),
        ({"version": None}, {"min_version": (0, 23, 0)}, "version unknown"),
    ],
)
def test_exclusion_reasons(
    probe: dict[str, object], health: dict[str, object], expected: str
) -> None:
    f = fleet(2, **health)
    probed(f.nodes[0])
    probed(f.nodes[1], **probe)  # type: ignore[arg-type]
    reason = f.exclusion(f.nodes[1], 0.0)
    assert reason is not None
    assert expected in reason
    assert f.exclusion(f.nodes[0], 0.0) is None


def test_head_age_grows_with_time_since_the_probe() -> None:
    f = fleet(1, max_head_age=30.0)
    probed(f.nodes[0], at=0.0, head_age=5.0)
    assert f.exclusion(f.nodes[0], 20.0) is None
    assert "old" in (f.exclusion(f.nodes[0], 40.0) or "")


def test_unprobed_nodes_may_serve() -> None:
    f = fleet(2)
    nodes, failopen = f.candidates(0.0)
    assert nodes == f.nodes
    assert not failopen


def test_fail_open_offers_the_least_bad_first() -> None:
    f = fleet(3, max_block_lag=5)
    probed(f.nodes[0], ok=False, error="down")
    probed(f.nodes[1], head=900)
    probed(f.nodes[2], head=1000)
    # Make node 2 unusable as well: ejected by failures.
    for _ in range(f.health.breaker_failures):
        f.nodes[2].record(0.0, 0.01, False, health=f.health)
    nodes, failopen = f.candidates(0.0)
    assert failopen
    assert nodes[0] is f.nodes[1]  # lagging but up beats ejected, and ejected beats down
    assert nodes[-1] is f.nodes[0]


def test_versions_compare_numerically() -> None:
    assert parse_version("0.23.10") > parse_version("0.23.9")  # type: ignore[operator]
    assert parse_version("v1.27.5-rc1") == (1, 27, 5, 1)
    assert parse_version("") is None


def test_repr_explains_the_node() -> None:
    (node,) = make_nodes(1)
    node.observe_latency(0.0, 0.0123)
    assert "ewma=12.3ms" in repr(node)
    assert "n0.test" in repr(node)


def test_health_defaults_match_the_documented_ones() -> None:
    assert Health().max_block_lag == 10


def test_a_node_back_from_down_starts_afresh() -> None:
    f = fleet(1, breaker_failures=2)
    node = f.nodes[0]
    probed(node, at=0.0)
    for _ in range(2):
        node.record(1.0, 0.001, False, error="refused", penalty=5.0, health=f.health)
    probed(node, at=2.0, ok=False, error="refused")
    assert node.ewma == pytest.approx(5.0) and f.exclusion(node, 2.0) is not None
    probed(node, at=3.0, ok=True, latency=0.004)  # the probe finds it well again
    assert node.ewma == pytest.approx(0.004)
    assert f.exclusion(node, 3.0) is None and node.breaker.consecutive_failures == 0


def test_outliers_by_success_rate_are_ejected_with_growing_time() -> None:
    from rpcbalancer.fleet.fleet import OutlierRule, eject_outliers

    f = fleet(4)
    for node in f.nodes:
        for i in range(40):
            node.record(0.0, 0.01, not (node.index == 2 and i % 2 == 0))
    rule = OutlierRule(min_requests=20, base_ejection=10.0)
    assert eject_outliers(f, 100.0, rule, jitter=1.0) == [f.nodes[2]]
    assert "success rate 50%" in (f.nodes[2].last_error or "")
    assert "ejected" in (f.exclusion(f.nodes[2], 105.0) or "")
    assert f.exclusion(f.nodes[2], 110.5) is None
    for i in range(40):  # still failing after it came back: ejected for twice as long
        f.nodes[2].record(111.0, 0.01, i % 2 == 1)
    eject_outliers(f, 120.0, rule, jitter=1.0)
    assert f.nodes[2].breaker.ejected_until == 140.0


def test_outlier_ejection_spares_a_healthy_fleet_and_half_of_a_sick_one() -> None:
    from rpcbalancer.fleet.fleet import OutlierRule, eject_outliers

    f = fleet(4)
    for node in f.nodes:
        for i in range(30):
            node.record(0.0, 0.01, i % 10 != 0)  # 90% everywhere: nobody stands out
    assert eject_outliers(f, 1.0, OutlierRule(min_success=0.95), jitter=1.0) == []
    g = fleet(4)
    for node in g.nodes:
        for i in range(30):
            node.record(0.0, 0.01, node.index == 0 or i % 3 == 0)  # three of four sick
    ejected = eject_outliers(g, 1.0, OutlierRule(stdev_factor=0.1, max_ejected=0.5), jitter=1.0)
    assert len(ejected) == 2  # at most half of the fleet is ever out


def test_a_returning_node_ramps_up() -> None:
    f = fleet(1, slow_start=10.0)
    node = f.nodes[0]
    node.eject(0.0, 5.0, 60.0, "breaker")
    assert node.ramp(5.0) == pytest.approx(0.1)
    assert node.ramp(10.0) == pytest.approx(0.55)
    assert node.ramp(15.0) == 1.0


def test_a_probe_answered_after_a_breaker_ejection_ends_it_but_not_an_outliers() -> None:
    """A link that flapped: the breaker ejected the node at t=10 for 10 s; a probe sent
    before that (answered at 10.5) changes nothing, one sent after it ends the ejection,
    with one trial try, a slow start and its latency learned afresh from the probe. An outlier ejection is not ended by a probe."""
    f = fleet(2, slow_start=10.0, breaker_failures=2)
    flapped, outlier = f.nodes
    probed(flapped, at=0.0)
    for _ in range(2):
        flapped.record(10.0, 2.0, False, error="timed out", penalty=2.0, health=f.health)
    assert flapped.breaker.is_open(10.0)
    probed(flapped, at=10.5, latency=1.0)  # sent at 9.5: before the ejection
    assert flapped.breaker.is_open(12.0)
    probed(flapped, at=12.0, latency=0.01)
    assert not flapped.breaker.is_open(12.0)
    assert flapped.ramp(12.0) == pytest.approx(0.1)
    assert flapped.model.level == pytest.approx(0.01)  # the timeouts' penalties forgotten
    flapped.record(12.5, 0.01, False, error="cannot connect", health=f.health)
    assert flapped.breaker.is_open(12.5)  # the trial try failed: out again, for longer
    assert flapped.breaker.ejected_until == pytest.approx(12.5 + 20.0)
    outlier.eject(10.0, 10.0, 60.0, "outlier")
    probed(outlier, at=12.0)
    assert outlier.breaker.is_open(12.0)


def test_an_outlier_ejected_for_its_slowness_is_back_when_its_probes_read_fast_again() -> None:
    """Behind a link that held every packet 200 ms, a node answered (and read its probes) in
    200 ms and was ejected as an outlier at t=10 for 10 s. The link heals: two probes in a
    row read 2 ms, the first sent after the ejection began, and the ejection ends through a
    slow start. One fast probe is not enough. A node ejected for its errors, whose probes
    read as its answers did (as does one that swallows some requests and answers the rest
    at its usual speed), stays out."""
    f = fleet(2, slow_start=10.0)
    slowed, failing = f.nodes
    for k in range(30):
        slowed.record(k * 0.3, 0.200, True, health=f.health)
        failing.record(k * 0.3, 0.005, k % 3 != 0, error="503", health=f.health)
    probed(slowed, at=9.0, latency=0.200)
    probed(failing, at=9.0, latency=0.005)
    for node in (slowed, failing):
        node.eject(10.0, 10.0, 60.0, "outlier")
    probed(slowed, at=11.0, latency=0.002)
    assert slowed.breaker.is_open(11.0)
    probed(slowed, at=12.0, latency=0.002)
    assert not slowed.breaker.is_open(12.0)
    assert slowed.ramp(12.0) == pytest.approx(0.1)
    assert slowed.model.level == pytest.approx(0.002, rel=0.01)
    for at in (11.0, 12.0, 13.0):
        probed(failing, at=at, latency=0.005)
    assert failing.breaker.is_open(13.0)

    stale = fleet(1, slow_start=10.0).nodes[0]  # fast probes sent before the ejection
    for k in range(30):
        stale.record(k * 0.3, 0.200, True, health=f.health)
    probed(stale, at=9.5, latency=0.002)
    stale.eject(10.0, 10.0, 60.0, "outlier")
    probed(stale, at=10.005, latency=0.01)  # sent before the ejection began
    assert stale.breaker.is_open(10.1)


def test_latency_quantiles_for_hedging_need_enough_samples() -> None:
    (node,) = make_nodes(1)
    for i in range(10):
        node.begin(0.0)
        node.end(0.0, 0.001 * (i + 1), True)
    assert node.quantile(0.95, min_samples=20) is None
    for i in range(10, 100):
        node.begin(0.0)
        node.end(0.0, 0.001 * (i + 1), True)
    assert node.quantile(0.95, min_samples=20) == pytest.approx(0.096)


def test_each_exclusion_has_a_bounded_kind_and_a_reason() -> None:
    f = fleet(6, max_block_lag=10, max_head_age=90.0, min_version=(0, 23), breaker_failures=1)
    ejected, down, lagging, old_head, old_version, fine = f.nodes
    probed(ejected)
    ejected.record(0.0, 0.01, False, error="reset", health=f.health)
    probed(down, ok=False, error="head: cannot connect")
    probed(lagging, head=940)
    probed(old_head, head_age=95.0)
    probed(old_version, version="0.22.0")
    probed(fine)
    kinds = [(e.kind if (e := f.excluded(n, 0.0)) else None) for n in f.nodes]
    assert kinds == ["ejected", "down", "lagging", "stale_head", "old_version", None]
    assert f.exclusion(lagging, 0.0) == "60 blocks behind the best node (max 10)"
    assert str(f.excluded(old_version, 0.0)) == "version 0.22.0 is below min_version 0.23"


def test_a_node_is_answering_until_its_tries_wait_too_long_or_its_last_one_failed() -> None:
    (node,) = make_nodes(1)
    assert node.answering(0.0)  # never tried: nothing says otherwise
    for k in range(20):
        node.begin(k * 0.1)
        node.end(k * 0.1 + 0.005, 0.005, True)
    node.begin(3.0)
    assert node.answering(3.015)  # out 15 ms, usually 5: not yet
    assert not node.answering(3.025)  # out 25 ms: more than 4 times its usual latency
    node.end(3.03, 0.03, False)
    assert not node.answering(3.03)  # its last try failed
    node.begin(3.1)
    node.end(3.105, 0.005, True)
    assert node.answering(3.105)  # it answers again
