from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpcbalancer.sim import Behaviour, FleetThread


@pytest.fixture
def fleet() -> Iterator[FleetThread]:
    """Three healthy fake Steem nodes and one lagging 200 blocks, in a background thread."""
    with FleetThread(
        {
            "fast": Behaviour(latency=0.002),
            "medium": Behaviour(latency=0.010),
            "slow": Behaviour(latency=0.030),
            "stale": Behaviour(latency=0.0, lag=200),
        }
    ) as running:
        yield running
