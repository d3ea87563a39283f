from __future__ import annotations

from rpcbalancer.failsafe.budget import RetryBudget


def test_extra_tries_stay_near_the_ratio_under_load() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, burst=5.0)
    granted = 0
    for i in range(10_000):  # 10,000 requests in 10 s, every one of them wanting a retry
        now = i / 1000
        budget.deposit(now)
        granted += budget.withdraw(now)
    assert 995 <= granted <= 1005  # 10% of the traffic, plus the initial burst


def test_the_floor_lets_a_quiet_balancer_retry() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=2.0, burst=3.0)
    for _ in range(3):
        assert budget.withdraw(0.0)
    assert not budget.withdraw(0.0)  # burst spent
    assert budget.withdraw(0.6)  # 1.2 tokens came back in 0.6 s
    assert not budget.withdraw(0.6)
    assert "refused" in repr(budget)
