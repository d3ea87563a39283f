"""Configuration: frozen, typed, validated once.

YAML files, environment variables and CLI flags all produce the same :class:`Config`.
``${VAR}`` (and ``${VAR:-default}``) is substituted inside string values after the YAML is
parsed, so a value can never change the document's structure; a string that is exactly one
placeholder takes the type its value reads as in YAML (``enabled: ${CACHE}`` -> ``true``).
Substituted values are remembered in :attr:`Config.secrets` so that they can be redacted.

A file written for DoctorLai/steem-load-balancer is recognised and mapped (see ``compat``).
"""

from __future__ import annotations

from .load import from_mapping, load, read_yaml
from .model import (
    CHAINS,
    DEFAULT_NODES,
    STRATEGIES,
    AccessLogConfig,
    ApiKey,
    ApiKeys,
    BroadcastConfig,
    BudgetConfig,
    CircuitBreaker,
    Config,
    ConsistencyConfig,
    HedgeConfig,
    Listen,
    MethodRules,
    MetricsConfig,
    NodeConfig,
    OutlierConfig,
    OverloadConfig,
    ProbeConfig,
    RateLimit,
    ServerLimits,
    StrategyConfig,
    Timeouts,
    WebSocketConfig,
    parse_duration,
)
from .urls import REDACTED, display_url

__all__ = [
    "CHAINS",
    "DEFAULT_NODES",
    "REDACTED",
    "STRATEGIES",
    "AccessLogConfig",
    "ApiKey",
    "ApiKeys",
    "BroadcastConfig",
    "BudgetConfig",
    "CircuitBreaker",
    "Config",
    "ConsistencyConfig",
    "HedgeConfig",
    "Listen",
    "MethodRules",
    "MetricsConfig",
    "NodeConfig",
    "OutlierConfig",
    "OverloadConfig",
    "ProbeConfig",
    "RateLimit",
    "ServerLimits",
    "StrategyConfig",
    "Timeouts",
    "WebSocketConfig",
    "display_url",
    "from_mapping",
    "load",
    "parse_duration",
    "read_yaml",
]
