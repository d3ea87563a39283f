"""Node-selection policies, selectable by name.

A new policy is one small module and one line in :data:`POLICIES`.
"""

from __future__ import annotations

import random

from ...config import StrategyConfig
from .base import BasePolicy, PickContext, Policy
from .fastest import Fastest
from .first import First
from .ip_hash import IpHash
from .latest_version import LatestVersion
from .least_conn import LeastConn
from .max_block import MaxBlock
from .race import Race
from .random_choice import Random
from .round_robin import RoundRobin
from .weighted import Weighted

POLICIES: dict[str, type[BasePolicy]] = {
    cls.name: cls
    for cls in (
        Fastest,
        Race,
        RoundRobin,
        Weighted,
        Random,
        LeastConn,
        IpHash,
        First,
        MaxBlock,
        LatestVersion,
    )
}


def make_policy(params: StrategyConfig, rng: random.Random | None = None) -> BasePolicy:
    return POLICIES[params.name](params, rng or random.Random())


__all__ = ["POLICIES", "BasePolicy", "PickContext", "Policy", "Race", "make_policy"]
