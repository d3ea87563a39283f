"""Loading: YAML, the environment and CLI flags into one :class:`~.model.Config`.

``${VAR}`` (and ``${VAR:-default}``) is substituted inside string values after the YAML is
parsed, so a value can never change the document's structure; a string that is exactly one
placeholder takes the type its value reads as in YAML (``enabled: ${CACHE}`` -> ``true``).
Substituted values are remembered in :attr:`Config.secrets` so that they can be redacted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .model import DEFAULT_NODES, Config
from .urls import MASK

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Substitution:
    """What replacing ``${VAR}`` placeholders found: the values that came from the
    environment (secrets), the variables that were not set, and each resulting string with
    its environment values masked (so a node URL can be shown without its key)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.found: set[str] = set()
        self.missing: set[str] = set()
        self.masks: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        return self._string(value)

    def _string(self, value: str) -> Any:
        env = self.env
        secret = False

        def replace(match: re.Match[str], masked: bool = False) -> str:
            nonlocal secret
            name, default = match.group(1), match.group(2)
            if name in env:
                if env[name]:
                    self.found.add(env[name])
                    secret = True
                return MASK if masked and env[name] else env[name]
            if default is None:
                self.missing.add(name)
                return ""
            return default

        whole = _PLACEHOLDER.fullmatch(value)
        result = _PLACEHOLDER.sub(replace, value)
        if secret:
            self.masks[result.strip()] = _PLACEHOLDER.sub(lambda m: replace(m, True), value)
        return _typed(result, whole is not None)


def _typed(result: str, whole: bool) -> Any:
    if whole and result and "\n" not in result:
        import yaml

        try:
            typed = yaml.safe_load(result)
        except yaml.YAMLError:
            return result
        if isinstance(typed, bool | int | float):
            return typed
    return result if result or not whole else None


def load(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from a YAML file (else ``RPCBALANCER_CONFIG``, else the
    built-in default), the environment and overrides.

    ``RPCBALANCER_NODES`` (comma-separated URLs) replaces the file's node list and
    ``RPCBALANCER_STORE`` its store URL; ``overrides`` (from CLI flags) win over both.
    """
    environ = os.environ if env is None else env
    if path is not None:
        raw, where = read_yaml(Path(path).read_text, f"config file {path}"), f"config file {path}"
    else:
        raw, where = from_env_text(environ) or ({}, "defaults")
    return from_mapping(raw, env=environ, overrides=overrides, source=where)


def from_env_text(env: Mapping[str, str]) -> tuple[dict[str, Any], str] | None:
    """The mapping ``RPCBALANCER_CONFIG`` holds, and where it came from: a file path, or the
    YAML or JSON text itself (a container's or a Lambda function's whole config in one
    variable). None when the variable is unset or empty."""
    source = env.get("RPCBALANCER_CONFIG", "").strip()
    if not source:
        return None
    if "\n" not in source and not source.startswith("{") and Path(source).is_file():
        where = f"config file {source}"
        return read_yaml(Path(source).read_text, where), where
    if source.startswith("{"):  # JSON, read without importing a YAML parser
        import json

        try:
            doc = json.loads(source)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return doc, "RPCBALANCER_CONFIG"
    return read_yaml(lambda: source, "RPCBALANCER_CONFIG"), "RPCBALANCER_CONFIG"


def read_yaml(read: Callable[[], str], what: str) -> dict[str, Any]:
    """A YAML mapping of keys from ``read()`` (a file, an environment variable's text)."""
    import yaml  # only here: a Lambda cold start configured by JSON or env never pays for it

    try:
        text = read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must hold a mapping of keys, not a list or text")
    return raw


def from_mapping(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "config",
) -> Config:
    from . import doctorlai as compat
    from . import drone, jussi

    env = os.environ if env is None else env
    substitute = _Substitution(env)
    data = substitute(dict(raw))
    found = substitute.found
    if substitute.missing:
        log.warning(
            "%s: environment variables not set, replaced by empty values: %s",
            source,
            ", ".join(sorted(substitute.missing)),
        )
    if compat.is_doctorlai(data):
        data = compat.from_doctorlai(data, source)
    elif jussi.is_jussi(data):
        data = jussi.from_jussi(data, source)
    elif drone.is_drone(data):
        data = drone.from_drone(data, source)
    if not (isinstance(data.get("upstreams"), dict) and data["upstreams"]):
        data.setdefault("nodes", list(DEFAULT_NODES))
    if env.get("RPCBALANCER_NODES"):
        data["nodes"] = [u.strip() for u in env["RPCBALANCER_NODES"].split(",") if u.strip()]
    if env.get("RPCBALANCER_STORE"):
        data["store"] = env["RPCBALANCER_STORE"]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("host", "port", "tls_cert", "tls_key"):
            data["listen"] = {**(data.get("listen") or {}), key: value}
        else:
            data[key] = value
    data["secrets"] = frozenset(found)
    try:
        return Config.model_validate(data, context={"masks": substitute.masks})
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + _describe(exc, found)) from None


def _describe(exc: ValidationError, secrets: set[str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        value = err.get("input")
        if isinstance(value, dict | list) or value is None:
            shown = ""
        elif any(secret in str(value) for secret in secrets):
            shown = " (got a value from the environment, not shown)"
        else:
            shown = f" (got {value!r})"
        lines.append(f"{key}: {message}{shown}")
    return "; ".join(lines)
