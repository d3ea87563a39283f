"""Who may call what: method allow/deny rules and API keys (sans-IO).

Method rules are shell-style patterns (``*.broadcast_*``, ``condenser_api.get_*``) compiled
into one regular expression per list; verdicts are remembered per method name (a bounded
cache: clients choose method names).

API keys are looked up by their SHA-256, so the table holds no key in clear and a lookup
does not compare secrets byte by byte. A key comes in a header (``x-api-key`` by default)
or as the request path (``POST /KEY``), for clients that can only be given a URL.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable

from ..config import ApiKey, ApiKeys, MethodRules

_CACHE_LIMIT = 4096


class MethodFilter:
    def __init__(self, rules: MethodRules) -> None:
        self.allow = _compile(rules.allow)
        self.deny = _compile(rules.deny)
        self.active = bool(rules.allow or rules.deny)
        self._verdicts: dict[str, bool] = {}

    def allowed(self, method: str) -> bool:
        verdict = self._verdicts.get(method)
        if verdict is None:
            verdict = (self.allow is None or bool(self.allow.fullmatch(method))) and not (
                self.deny is not None and self.deny.fullmatch(method)
            )
            if len(self._verdicts) < _CACHE_LIMIT:
                self._verdicts[method] = verdict
        return verdict


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class KeyRing:
    def __init__(self, config: ApiKeys, endpoint: MethodFilter) -> None:
        self.config = config
        self.header = config.header.lower()
        self._by_digest = {_digest(k.key): k for k in config.keys}
        self._rules: dict[str, Callable[[str], bool]] = {}
        for key in config.keys:
            if key.methods.allow or key.methods.deny:
                own = MethodFilter(key.methods)
                self._rules[key.name] = (
                    own.allowed if not endpoint.active else _both(endpoint.allowed, own.allowed)
                )

    def rules(self, key: ApiKey) -> Callable[[str], bool] | None:
        """What ``key`` may call (the endpoint's rules and its own), or None when the
        endpoint's rules alone decide."""
        return self._rules.get(key.name)

    def find(self, offered: str | None) -> ApiKey | None:
        if not offered or len(offered) > 256:
            return None
        return self._by_digest.get(_digest(offered))

    def from_path(self, path: str) -> ApiKey | None:
        """The key given as the whole path (``/KEY``), if it is one."""
        if path.count("/") != 1 or len(path) < 17:
            return None
        return self.find(path[1:])


def _both(first: Callable[[str], bool], second: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda method: first(method) and second(method)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
