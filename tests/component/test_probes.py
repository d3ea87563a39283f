"""The probe rounds (health/probe.py) against simulated nodes over HTTP: a node that swallows
its probes does not hold the round back, nor the next ones."""

from __future__ import annotations

from typing import Any

from rpcbalancer.sim import Behaviour


async def test_a_probe_left_unanswered_goes_on_without_holding_the_rounds(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "s": Behaviour()}, probe={"timeout": 1.0})
    prober = h.balancer.prober
    answering, silent = h.node("a"), h.node("s")
    h.nodes["s"].set(hang_rate=1.0)  # it swallows every request: its probe waits its timeout
    first = await prober.round(20.0, wait=0.2)
    assert [node for node, _ in first] == [answering]  # the round did not wait for it
    out = prober._out[id(silent)]
    assert not out.done()  # its probe goes on
    second = await prober.round(20.0, wait=0.2)
    assert [node for node, _ in second] == [answering]
    assert prober._out[id(silent)] is out  # not probed twice at once
    await out  # its timeout: applied when it ends
    assert silent.probe is not None and not silent.probe.ok
    assert id(silent) not in prober._out
    h.nodes["s"].set(hang_rate=0.0)
    third = await prober.round(20.0, wait=5.0)
    assert {node for node, _ in third} == {answering, silent}
    assert silent.probe.ok


async def test_a_round_without_wait_is_cut_at_its_deadline(harness: Any) -> None:
    h = await harness({"a": Behaviour(), "s": Behaviour()}, probe={"timeout": 5.0})
    prober = h.balancer.prober
    silent = h.node("s")
    h.nodes["s"].set(hang_rate=1.0)
    results = await prober.round(0.3)
    assert [node for node, _ in results] == [h.node("a")]
    assert id(silent) not in prober._out  # cut: nothing left going on
