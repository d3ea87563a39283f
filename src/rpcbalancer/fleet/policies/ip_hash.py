"""``ip_hash``: one client IP, one node, by weighted rendezvous hashing.

Every (client, node) pair gets a score from a hash; the client goes to the highest score.
When a node drops out, only the clients it served move (each to its own runner-up), and
when it comes back they return: the least churn any hashing scheme can give.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ..nodes import Node
from .base import BasePolicy, PickContext

_SCALE = float(1 << 64)


def _score(client: str, node: Node) -> float:
    digest = hashlib.blake2b(f"{client}\x00{node.url}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (_SCALE + 1)  # in (0, 1]
    if node.weight <= 0:
        return -math.inf
    return -node.weight / math.log(unit) if unit < 1 else math.inf


class IpHash(BasePolicy):
    name = "ip_hash"
    how = "the same node for the same client address (weighted rendezvous hashing)"

    def pick(self, nodes: Sequence[Node], ctx: PickContext) -> Node:
        return max(nodes, key=lambda n: _score(ctx.client_ip, n))
