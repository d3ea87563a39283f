"""The forwarding's transition table: what may follow what, and nothing else."""

from __future__ import annotations

import pytest

from rpcbalancer.proxy import states
from rpcbalancer.proxy.states import EVENTS, STATES, TRANSITIONS


def test_every_state_has_its_row_and_every_move_lands_on_a_state() -> None:
    assert set(TRANSITIONS) == set(range(len(STATES)))
    for state, moves in TRANSITIONS.items():
        assert set(moves) <= set(range(len(EVENTS))), STATES[state]
        assert set(moves.values()) <= set(TRANSITIONS), STATES[state]


def test_over_is_over_and_anything_not_over_may_be_cancelled() -> None:
    assert TRANSITIONS[states.DONE] == {} and TRANSITIONS[states.CANCELLED] == {}
    for state in set(TRANSITIONS) - {states.DONE, states.CANCELLED}:
        assert TRANSITIONS[state][states.CANCEL] == states.CANCELLED
        assert TRANSITIONS[state][states.END] == states.DONE


def test_a_hedge_only_beside_a_try_and_a_retry_only_after_one() -> None:
    assert [STATES[s] for s, moves in TRANSITIONS.items() if states.HEDGE in moves] == ["trying"]
    assert [STATES[s] for s, moves in TRANSITIONS.items() if states.RETRY in moves] == ["trying"]
    assert TRANSITIONS[states.HEDGED][states.ONE_LEFT] == states.TRYING


async def test_a_move_the_table_does_not_allow_is_refused_at_once() -> None:
    from rpcbalancer.failsafe.budget import RetryBudget
    from rpcbalancer.proxy.forwarding import Forwarding
    from rpcbalancer.proxy.request import ProxyRequest

    class Router:
        total = 1.0
        budget = RetryBudget()

        @staticmethod
        def clock() -> float:
            return 0.0

    forwarding = Forwarding(Router(), ProxyRequest("POST", None, {}, b"{}"), lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(states.BadTransition, match="hedge while picking"):
        forwarding._to(states.HEDGE)
    assert forwarding.state_name == "picking"
