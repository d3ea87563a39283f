"""Chain presets: how to probe a node of each chain and read its health.

A new preset is one small module and one line in :data:`CHAINS`.
"""

from __future__ import annotations

from .base import Answer, Chain, ProbeCall, Reading
from .evm import Evm
from .steem import SteemLike

CHAINS: dict[str, Chain] = {
    "steem": SteemLike("steem"),
    "hive": SteemLike("hive"),
    "blurt": SteemLike("blurt"),
    "evm": Evm(),
}

__all__ = ["CHAINS", "Answer", "Chain", "ProbeCall", "Reading"]
