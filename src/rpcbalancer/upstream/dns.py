"""DNS-based balancing: a node host name with several addresses becomes one node per address.

With ``resolve_dns: true`` each configured node whose host is a name is resolved at start
and every ``dns_refresh`` seconds. Every address becomes a node of its own (connecting to
that address, sending the name as Host header and TLS SNI), so the policies, health checks
and ejection see each server behind a round-robin DNS name separately. Addresses that stay
keep their state across refreshes; a failed lookup keeps the previous addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..config import NodeConfig
from ..fleet.fleet import Fleet
from ..fleet.nodes import Node
from .names import Resolver, is_literal, system_resolver

log = logging.getLogger(__name__)


class DnsExpander:
    """Keeps the fleet's membership in line with what the node names resolve to
    (call :meth:`refresh` periodically)."""

    def __init__(
        self,
        specs: Sequence[NodeConfig],
        fleet: Fleet,
        *,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.specs = specs
        self.fleet = fleet
        self.resolver = resolver
        self._by_key: dict[tuple[str, str | None], Node] = {}
        self._next_index = max((n.index for n in fleet.nodes), default=-1) + 1

    async def refresh(self) -> None:
        previous: dict[str, list[Node]] = {}
        for node in self.fleet.nodes:
            previous.setdefault(node.spec.url, []).append(node)
        nodes: list[Node] = []
        for spec in self.specs:
            parts = urlsplit(spec.url)
            host = parts.hostname or ""
            if is_literal(host):
                nodes.extend(previous.get(spec.url) or [self._node(spec, None)])
                continue
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                log.warning("cannot resolve %s (%s); keeping its previous addresses", host, exc)
                addresses = []
            if not addresses:
                nodes.extend(previous.get(spec.url) or [self._node(spec, None)])
                continue
            nodes.extend(self._node(spec, address) for address in addresses)
        self.fleet.replace(nodes)

    def _node(self, spec: NodeConfig, address: str | None) -> Node:
        key = (spec.url, address)
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._next_index, spec, address=address)
            self._next_index += 1
            self._by_key[key] = node
        return node
