"""The configuration reference, ``docs/configuration.md``, rendered from the model.

Every key's description is its field's docstring (read from the model's source here, when
the page is rendered: importing the config costs nothing for it), its type, bounds and
default come from the field itself, so the page cannot drift from the code: ``make docs`` writes it
(``python -m rpcbalancer.config.reference > docs/configuration.md``) and a test fails when
the file and :func:`render` differ.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .doctorlai import _IGNORED
from .model import DEFAULT_NODES, Config, _seconds, _ttl

# Fields the loader fills in and a file never sets.
INTERNAL = frozenset({"secrets"})

# What a field accepts beyond its type, through a ``mode="before"`` validator.
_SHAPES = {
    "nodes": "list of URLs or mappings",
    "strategy": "name or mapping",
}

# Defaults the loader supplies where the model has none or an empty one.
_DEFAULTS = {
    "nodes": "the public Steem nodes (above)",
    "nodes[].name": "the URL, shown safely",
    "strategy.choices": "16 (`load`), 3 (`peak_ewma`)",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the reference: a dotted key and what the model says of it."""

    key: str
    type: str
    default: str
    description: str


def entries(model: type[BaseModel] = Config, prefix: str = "") -> list[Entry]:
    """Every key of ``model``, depth first: ``nodes[].url``, ``api_keys.keys[].name``."""
    rows: list[Entry] = []
    described = docstrings(model)
    for name, field in model.model_fields.items():
        if not prefix and name in INTERNAL:
            continue
        key = prefix + name
        rows.append(_entry(key, field, described.get(name, "")))
        sub, joint = _submodel(field.annotation)
        if sub is not None:
            rows += entries(sub, key + joint)
    return rows


def docstrings(model: type[BaseModel]) -> dict[str, str]:
    """Each field's docstring (the string just after its annotated assignment), read from
    the model's source, its parents' included."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for first, second in itertools.pairwise(body.body):
            if (
                isinstance(first, ast.AnnAssign)
                and isinstance(first.target, ast.Name)
                and isinstance(second, ast.Expr)
                and isinstance(second.value, ast.Constant)
                and isinstance(second.value.value, str)
            ):
                found[first.target.id] = inspect.cleandoc(second.value.value)
    return found


def _entry(key: str, field: FieldInfo, description: str) -> Entry:
    kind = _SHAPES.get(key) or _type(field.annotation, field.metadata)
    bounds = _bounds(field.metadata)
    return Entry(
        key=key,
        type=f"{kind}, {bounds}" if bounds else kind,
        default=_DEFAULTS.get(key) or _default(field),
        description=" ".join(description.split()).replace("``", "`"),
    )


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds (directly, as an option, in a list or as a mapping's values)
    and how its keys are written below the field's: ``.``, ``[].`` or ``.<name>.``."""
    for arg in (annotation, *_options(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, "."
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, "[]."
    if get_origin(annotation) is dict:
        item = get_args(annotation)[1]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, ".<name>."
    return None, ""


def _options(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return ()


_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}


def _type(annotation: Any, metadata: list[Any]) -> str:
    if get_origin(annotation) is Annotated:  # Seconds or Ttl inside an option
        base, *more = get_args(annotation)
        return _type(base, [*metadata, *more])
    if annotation is float and any(_is_seconds(m) for m in metadata):
        return "duration"
    if annotation is float and any(_is_ttl(m) for m in metadata):
        return "TTL"
    if annotation in _NAMES:
        return _NAMES[annotation]
    options = _options(annotation)
    if options:
        optional = type(None) in get_args(annotation)
        return " or ".join(_type(a, metadata) for a in options) + (" or none" if optional else "")
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_plural(_type(args[0], []))}"
    if origin in (frozenset, set):
        return f"set of {_plural(_type(args[0], []))}"
    if origin is dict:
        return f"mapping of {_plural(_type(args[1], []))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return str(annotation)  # pragma: no cover - a new kind of field: add a name above


def _plural(name: str) -> str:
    return name if name.startswith("one of") else name + "s"


def _is_seconds(meta: Any) -> bool:
    return isinstance(meta, BeforeValidator) and meta.func is _seconds


def _is_ttl(meta: Any) -> bool:
    return isinstance(meta, BeforeValidator) and meta.func is _ttl


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for meta in metadata:
        if isinstance(meta, annotated_types.Ge):
            parts.append(f"≥ {_number(meta.ge)}")
        elif isinstance(meta, annotated_types.Gt):
            parts.append(f"> {_number(meta.gt)}")
        elif isinstance(meta, annotated_types.Le):
            parts.append(f"≤ {_number(meta.le)}")
        elif isinstance(meta, annotated_types.Lt):
            parts.append(f"< {_number(meta.lt)}")
        elif isinstance(meta, annotated_types.MinLen):
            parts.append(f"at least {meta.min_length} long")
        elif isinstance(meta, annotated_types.MaxLen):
            parts.append(f"at most {meta.max_length} long")
    return ", ".join(parts)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple | list | frozenset):
        return "`[]`" if not value else "`[" + ", ".join(map(str, value)) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    return f"`{_number(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[Entry]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for row in rows:
        cells = (f"`{row.key}`", row.type, row.default, row.description)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render() -> str:
    """The whole of ``docs/configuration.md``."""
    rows = entries()
    top = [r for r in rows if "." not in r.key and "[]" not in r.key]
    lines = [*_text(_INTRO), ""]
    lines += [f"- `{url}`" for url in DEFAULT_NODES]
    lines += ["", *_text(_ENVIRONMENT_HEAD), "", *_pairs(_ENVIRONMENT), "", *_text(_LAMBDA), ""]
    lines += ["## Top-level keys", ""]
    lines += ["Sections (a mapping of their own keys) have a table of their own below.", ""]
    lines += [*_table(top), ""]
    for section in top:
        inside = [r for r in rows if r.key.startswith((section.key + ".", section.key + "[]."))]
        if not inside:
            continue
        lines += [f"## `{section.key}`", "", section.description, ""]
        lines += [*_table(inside), ""]
    lines += _doctorlai()
    return "\n".join(lines).rstrip("\n") + "\n"


def _doctorlai() -> list[str]:
    ignored = sorted(k for k in _IGNORED if k != "loggging_max_body_len")  # their typo, too
    last = (
        ", ".join(f"`{k}`" for k in ignored),
        "accepted, not carried over; the warning says why",
    )
    return [*_text(_DOCTORLAI_HEAD), "", *_pairs((*_DOCTORLAI, last))]


def _text(block: str) -> list[str]:
    return block.strip("\n").split("\n")


def _pairs(rows: tuple[tuple[str, str], ...]) -> list[str]:
    """A two-column table; the first row is the header."""
    head, *body = rows
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in body)]


_INTRO = """
<!-- Generated by `make docs` (python -m rpcbalancer.config.reference) from the docstrings
of src/rpcbalancer/config/model.py. Edit those, not this file. -->

# Configuration reference

rpcbalancer reads one YAML file (`rpcbalancer serve --config balancer.yaml`, or `make run
CONFIG=balancer.yaml`). It is validated once, at start: a bad file is refused with a message
that names the key and the value, such as `nodes.0.url: must be an http:// or https:// URL
with a host (got 'ftp://x')`, and an unknown key is an error, not ignored.

```yaml
chain: steem
nodes:
  - https://api.steemit.com
  - url: https://api.justyy.com
    weight: 2
    headers: {X-Edge-Key: "${X_EDGE_KEY}"}
strategy: fastest                 # or {name: race, race_ttl: 3}
timeouts: {connect: 2, per_try: 5, total: 12}
retries: 2
max_block_lag: 10
store: sqlite:///rpcbalancer-health.db
log_level: info
```

**Environment values.** `${VAR}` and `${VAR:-default}` inside a value are replaced from the
environment after the YAML is parsed, so a value can never change the file's structure. A
value that is exactly one placeholder takes the type its text reads as in YAML:
`retries: ${RETRIES}` is a number, `enabled: ${HEDGE}` a boolean. A variable that is not set
and has no default becomes empty (none when it is the whole value), with a warning naming
it. Values that came from the environment are treated as secrets: never shown in logs,
answers, status, metrics or error messages.

**Durations.** Every time setting (type *duration* below) takes seconds as a number (`2`,
`0.5`) or a duration: `500ms`, `10s`, `1m`, `1h`, `2d`.

**Defaults.** Every key has a default; an empty file serves the public Steem nodes:
"""

_ENVIRONMENT_HEAD = """
**The environment and the command line** produce the same configuration as the file:
"""

_ENVIRONMENT = (
    ("variable or flag", "what it does"),
    (
        "`RPCBALANCER_CONFIG`",
        "the configuration when no `--config` is given: a file path, or the YAML or JSON text"
        " itself (a container's or a Lambda function's whole configuration in one variable)",
    ),
    ("`RPCBALANCER_NODES`", "comma-separated node URLs; replaces `nodes`"),
    ("`RPCBALANCER_STORE`", "a store URL; replaces `store`"),
    (
        "`--host`, `--port`, `--tls-cert`, `--tls-key` (`rpcbalancer serve`)",
        "replace `listen.host`, `listen.port`, `listen.tls_cert`, `listen.tls_key`",
    ),
)

_LAMBDA = """
On AWS Lambda the defaults differ: `canary: external` (the scheduled canary function
probes), `store: none` unless one is named, `store_refresh: 15`, `probe.interval: 60`.
"""

_DOCTORLAI_HEAD = """
## Coming from DoctorLai/steem-load-balancer

Point rpcbalancer at that project's `config.yaml` unchanged: a file with any of its keys is
recognised, its keys are mapped as below, and one warning at start lists every key that is
not carried over and why.
"""

_DOCTORLAI = (
    ("theirs", "ours"),
    ("`nodes`, `weights`", "`nodes` with `weight` per node"),
    (
        "`headers` (node URL → that node's headers)",
        "`headers` of each node it names; an entry for a URL that is not a node is named in"
        " the warning; a plain `name: value` entry goes to every node",
    ),
    (
        "`strategy`: `first`, `random`, `max_jussi_number`, `latest_version`,"
        " `lowest_latency`, `weighted`",
        "`first`, `random`, `max_block`, `latest_version`, `fastest`, `weighted`",
    ),
    ("`timeout` (ms)", "`timeouts.per_try` (and a matching `timeouts.total`)"),
    ("`retry_count` (tries)", "`retries` (= `retry_count` − 1)"),
    ("`max_jussi_number_diff`", "`max_block_lag`"),
    ("`min_blockchain_version`", "`min_version`"),
    ("`port`", "`listen.port`"),
    ("`user_agent`", "`user_agent`"),
    ("`rejectUnauthorized: false`", "`verify_tls: false` on every node, with a warning"),
    (
        "`circuitBreaker: {enabled, failureThreshold, cooldownMs}`",
        "`circuit_breaker: {failures, cooldown}`",
    ),
    (
        "`cache: {enabled, ttl}`",
        "`strategy.race_ttl` with the `race` strategy; otherwise not carried over (the node"
        " choice comes from background probes)",
    ),
    (
        "`rateLimit: {windowMs, maxRequests}`",
        "`rate_limit`: `rate = maxRequests / window`, `burst = maxRequests`",
    ),
    ("`sslCertPath`, `sslKeyPath`", "`listen.tls_cert`, `listen.tls_key` (HTTPS)"),
    ("`version`", "`deployment_version`"),
    (
        "(its monitoring)",
        "`compat: doctorlai`: `GET /` with its `status_code` and `__server__`, `__version__`,"
        " `__selected__`, `__servers__`, `__ip__`, `__config__`, `__first_k_candidates__`,"
        " `__load_balancer_version__`, `__stats__` fields and its `IP`, `Server`, `Version`,"
        ' `LoadBalancerVersion` headers; `/health` as `{"status": "OK",'
        ' "uptime_seconds": ...}` (always 200); `/version` with `version`; `/metrics` also'
        " under its `steem_lb_*` names (accesses are tries, errors failed tries, not chosen /"
        " behind / timed out are probes that found the node down, lagging or silent)",
    ),
)


if __name__ == "__main__":
    print(render(), end="")
