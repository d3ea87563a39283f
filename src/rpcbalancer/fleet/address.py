"""Where a node is: its address, fixed for the node's life (sans-IO).

A :class:`NodeAddress` is what the transport needs to reach a node and what every view names
it by: the URL, the name shown instead of it, its identity in the health store, the headers
sent with every request, TLS verification, and, for a node pinned to one IP address of its
host name (DNS expansion), the name still sent as Host header and TLS SNI. It is immutable and
hashable: the transport keys its connections and encoded request prefixes by it, and a node
that changes address is another node.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..config import NodeConfig


@dataclass(frozen=True, slots=True, eq=False)
class NodeAddress:
    url: str
    """Where requests go (with the pinned IP address in place of the host, when pinned)."""
    name: str
    """Shown in headers, logs, status and metrics (never a secret)."""
    key: str
    """The node's identity in the health store (see :attr:`NodeConfig.key`)."""
    headers: dict[str, str]
    """The node's own headers, sent with every request and probe."""
    verify_tls: bool = True
    host_header: str | None = None
    """The Host header when the URL holds a pinned address, else None (the URL's)."""
    sni: str | None = None
    """The TLS server name when the URL holds a pinned address, else None (the URL's)."""

    def __repr__(self) -> str:
        return f"<NodeAddress {self.name}>"

    @classmethod
    def of(
        cls, spec: NodeConfig, address: str | None = None, role: str | None = None
    ) -> NodeAddress:
        """A configured node's address. ``address`` pins it to one IP address of its host
        name: it connects there, and still sends the name as Host header and TLS SNI.
        ``role`` tells apart one URL listed in several groups (a full node that serves the
        chain routes and the hivemind ones): the group's name joins its name and store key."""
        name, key = spec.name, spec.key
        if role is not None:
            name, key = f"{name} ({role})", f"{key} ({role})"
        if address is None:
            return cls(spec.url, name, key, spec.headers, spec.verify_tls)
        parts = urlsplit(spec.url)
        literal = f"[{address}]" if ":" in address else address
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        url = urlunsplit(parts._replace(netloc=netloc))
        return cls(
            url=url,
            name=f"{name} [{address}]",
            key=url if key == spec.url else f"{key} [{address}]",
            headers=spec.headers,
            verify_tls=spec.verify_tls,
            host_header=parts.netloc.rpartition("@")[2],
            sni=parts.hostname if parts.scheme == "https" else None,
        )
