"""rpcbalancer: a load balancer for blockchain JSON-RPC API nodes."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
