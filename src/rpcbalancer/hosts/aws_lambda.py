"""AWS Lambda: the same balancer behind API Gateway, a Function URL or an ALB.

``handler`` takes every event shape a user can wire to the function:

1. the original design's REST API *non-proxy* integration, whose mapping template turns the
   request into ``{"body-json": ..., "params": {...}, "context": {...}}``; the reply is the
   node's JSON itself (with ``__server__``/``__version__``, as the original added), and a
   failure is ``{"statusCode", "headers", "body"}`` as the original returned it;
2. REST API proxy integration (payload 1.0), 3. HTTP API (payload 2.0), 4. a Function URL and
   5. an ALB target group (single or multi-value headers), all through ``mangum``;
6. a direct invocation whose payload is a JSON-RPC request (the reply is the JSON-RPC answer);
7. an EventBridge schedule, which runs a canary round (the same as ``canary_handler``).

One :class:`LambdaHost` per container holds the event loop, the balancer (node state, the
pooled node connections, the store client) and lives across warm invocations. Lambda freezes
the process between invocations, so nothing runs in the background: before each request the
balancer does what housekeeping is due (:meth:`Balancer.maintain`), and it routes by the
canary's records in the store while they are fresh, by the original per-request race when
there are none (no store configured, or a canary that stopped).

Configuration comes from the environment: ``RPCBALANCER_CONFIG`` (a path to a YAML file, or
the YAML/JSON text itself, e.g. from SSM), ``RPCBALANCER_NODES`` and ``RPCBALANCER_STORE``
(``dynamodb://table``). Lambda's own defaults differ from the server's: the canary is external
(the scheduled function), there is no store unless one is named, and records count as fresh
for three one-minute canary intervals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
from mangum import Mangum

from .. import jsonrpc
from ..balancer import Balancer
from ..config import Config, display_url, from_mapping
from ..config.load import from_env_text
from ..errors import ConfigError
from ..health.store import shown_url
from ..messages import HttpRequest, HttpResponse, error_response, internal_error
from ..proxy.gateway import Gateway
from .asgi import App

log = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024
"""Lambda's limit on a synchronous invocation's response, in bytes."""

DEADLINE_MARGIN = 0.5
"""Seconds kept free at the end of an invocation to answer before Lambda's timeout."""

LAMBDA_DEFAULTS: dict[str, Any] = {
    "canary": "external",
    "store": "none",
    "store_refresh": 15,
    "probe": {"interval": 60},
}

ORIGINAL_HEADERS = {
    "Content-Type": "application/json",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Cache-Control": "no-cache, no-store",
}
"""Headers of a failure answered in the original design's shape."""


def lambda_config(env: Mapping[str, str] | None = None) -> Config:
    """The configuration for a Lambda function, from its environment."""
    env = os.environ if env is None else env
    raw, where = from_env_text(env) or ({}, "RPCBALANCER_CONFIG")
    merged = {**LAMBDA_DEFAULTS, **raw}
    if isinstance(raw.get("probe"), dict):
        merged["probe"] = {**LAMBDA_DEFAULTS["probe"], **raw["probe"]}
    return from_mapping(merged, env=env, source=where)


class LambdaHost:
    """What one Lambda container keeps between invocations."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.balancer = Balancer(config, background=False)
        self.app = App(config, self.balancer)
        self.adapter = Mangum(self.app, lifespan="off")
        annotate = config.annotate if "annotate" in config.model_fields_set else "body"
        self.original = Gateway(self.balancer, annotate=annotate)
        self.invocations = 0
        self._opened = False

    # -- entry points --------------------------------------------------------------------

    def invoke(self, event: Any, context: Any) -> Any:
        """One invocation; the access log is written before Lambda freezes the process."""
        try:
            return self._invoke(event, context)
        finally:
            if self.balancer.access_log is not None:
                self.balancer.access_log.flush()

    def _invoke(self, event: Any, context: Any) -> Any:
        self.invocations += 1
        kind = event_kind(event)
        if kind == "schedule":
            return self.canary_round(context)
        self._prepare(context)
        if kind == "original":
            return self.loop.run_until_complete(self._original(event))
        if kind == "jsonrpc":
            return self.loop.run_until_complete(self._direct(event))
        if kind == "unknown":
            return _unknown_event(event)
        try:
            result = self.adapter(event, context)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
            # A malformed event (a body that is not base64, a field of the wrong type):
            # the caller's mistake, answered as such rather than as a platform failure.
            return _bad_event(f"{type(exc).__name__}: {exc}")
        size = _size(result)
        if size > MAX_PAYLOAD:
            result = self._too_large_http(event, context, size)
        return result

    def canary_round(self, context: Any = None) -> dict[str, Any]:
        """One full canary round into the store; a summary for the invocation's log."""
        self._prepare(context)
        canary = self.balancer.canary
        wait = None if context is None else max(1.0, _remaining(context) - 5.0)
        records = self.loop.run_until_complete(canary.once(wait))
        names = {node.key: node.name for node in self.balancer.fleet.nodes}
        nodes = [
            {
                "node": names.get(r.node) or display_url(r.node),
                "ok": r.ok,
                "latency_ms": None if r.latency is None else round(r.latency * 1000, 1),
                "head": r.head_block,
                "error": r.error,
            }
            for r in records
        ]
        summary = {
            "probed": len(records),
            "ok": sum(1 for r in records if r.ok),
            "store": "none" if self.balancer.store is None else shown_url(self.balancer.store.url),
            "nodes": nodes,
        }
        log.info("canary round: %d of %d nodes ok", summary["ok"], len(records))
        return summary

    def close(self) -> None:
        """Close the node connections and the store, then the loop (tests, runtime shutdown)."""
        if self._opened:
            self.loop.run_until_complete(self.balancer.__aexit__(None, None, None))
            self._opened = False
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        asyncio.set_event_loop(None)

    # -- internals -----------------------------------------------------------------------

    def _prepare(self, context: Any) -> None:
        """Open once, then do what housekeeping is due; bound the request by Lambda's time."""
        if not self._opened:
            self.loop.run_until_complete(self.balancer.__aenter__())
            self._opened = True
        else:
            self.loop.run_until_complete(self.balancer.maintain())
        total = self.config.timeouts.total
        if context is not None:
            total = max(0.05, min(total, _remaining(context) - DEADLINE_MARGIN))
        self.balancer.router.total = total

    async def _original(self, event: Mapping[str, Any]) -> Any:
        """The mapping-template event: JSON in, JSON out, failures in the original shape."""
        ctx = _mapping(event.get("context"))
        params = _mapping(event.get("params"))
        method = str(ctx.get("http-method") or "POST").upper()
        body_json = event.get("body-json")
        if method == "POST" and body_json in (None, "", {}):
            method = "GET"  # as in the original: an empty body is a GET
        headers = {str(k).lower(): str(v) for k, v in _mapping(params.get("header")).items()}
        query = urlencode({str(k): str(v) for k, v in _mapping(params.get("querystring")).items()})
        body = _dump(body_json) if method == "POST" else b""
        request = HttpRequest(
            method=method,
            path=_resource_path(str(ctx.get("resource-path") or "/"), _mapping(params.get("path"))),
            query=query,
            headers=headers,
            body=body,
            peer=str(ctx.get("source-ip") or ""),
        )
        response = await self._handle(self.original, request)
        if len(response.body) + 1024 > MAX_PAYLOAD:
            response = _too_large(body, len(response.body))
        if response.status >= 400:
            return {
                "statusCode": response.status,
                "headers": dict(ORIGINAL_HEADERS),
                "body": response.body.decode("utf-8", "replace"),
            }
        return _load(response.body)

    async def _direct(self, event: Any) -> Any:
        """A direct invocation with a JSON-RPC request (or batch) as the payload."""
        body = _dump(event)
        request = HttpRequest(method="POST", path="/", body=body, peer="")
        response = await self._handle(self.app.gateway, request)
        if len(response.body) + 1024 > MAX_PAYLOAD:
            response = _too_large(body, len(response.body))
        return _load(response.body)

    async def _handle(self, gateway: Gateway, request: HttpRequest) -> HttpResponse:
        try:
            return await gateway.handle(request)
        except Exception:
            log.exception("unexpected error handling %s %s", request.method, request.path)
            return internal_error()

    def _too_large_http(self, event: Any, context: Any, size: int) -> dict[str, Any]:
        handler = self.adapter.infer(event, context)
        response = _too_large(handler.body, size)
        answer: dict[str, Any] = handler(
            {
                "status": response.status,
                "headers": [[k.encode(), v.encode()] for k, v in response.headers],
                "body": response.body,
            }
        )
        return answer


# -- event shapes ----------------------------------------------------------------------------


def event_kind(event: Any) -> str:
    """Which of the shapes this event is: original, http, jsonrpc, schedule or unknown."""
    if isinstance(event, list):
        return "jsonrpc"
    if not isinstance(event, dict):
        return "unknown"
    if "body-json" in event or ("params" in event and "context" in event):
        return "original"
    if "requestContext" in event or "resource" in event or "version" in event:
        return "http"
    if event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        return "schedule"
    if "jsonrpc" in event or "method" in event:
        return "jsonrpc"
    return "unknown"


def _resource_path(resource: str, values: Mapping[str, Any]) -> str:
    """``/{proxy+}`` with ``{"proxy": "a/b"}`` is ``/a/b``: the path the client asked for."""

    def fill(match: re.Match[str]) -> str:
        return str(values.get(match.group(1), ""))

    return re.sub(r"\{([^}+]+)\+?\}", fill, resource) or "/"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _dump(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits: the standard library keeps them exact
        return json.dumps(doc, separators=(",", ":")).encode()


def _load(body: bytes) -> Any:
    """A JSON answer as the document Lambda will serialise; other bodies as text."""
    try:
        return json.loads(body)  # exact big integers, unlike orjson
    except ValueError:
        return body.decode("utf-8", "replace")


def _size(result: dict[str, Any]) -> int:
    """The size of Lambda's answer, serialised only when it might be too large: a JSON
    string is at most six times its length (``\\u0000`` escapes), headers are small."""
    body = result.get("body")
    if isinstance(body, str) and len(body) * 6 + 65536 < MAX_PAYLOAD:
        return len(body)
    try:
        return len(orjson.dumps(result))
    except TypeError:
        return len(json.dumps(result))


def _remaining(context: Any) -> float:
    try:
        return float(context.get_remaining_time_in_millis()) / 1000.0
    except (AttributeError, TypeError, ValueError):
        return float("inf")


def _too_large(request_body: bytes, size: int) -> HttpResponse:
    call = jsonrpc.parse(request_body) if request_body else None
    message = (
        f"The answer ({size:,} bytes) is larger than AWS Lambda's {MAX_PAYLOAD // 2**20} MB "
        "response limit; ask for less data per request"
    )
    return error_response("upstream", message, call if isinstance(call, jsonrpc.RpcCall) else None)


def _bad_event(why: str) -> dict[str, Any]:
    log.warning("malformed event: %s", why)
    return _original_error("invalid", f"Malformed event: {why[:200]}")


def _unknown_event(event: Any) -> dict[str, Any]:
    keys = ", ".join(sorted(map(str, event)))[:200] if isinstance(event, dict) else type(event)
    log.warning("unsupported event (keys: %s)", keys)
    return _original_error(
        "invalid",
        "Unsupported Lambda event: expected API Gateway (mapping template, REST or HTTP API), "
        "a Function URL, an ALB, a JSON-RPC payload or an EventBridge schedule",
    )


def _original_error(kind: str, message: str) -> dict[str, Any]:
    """An error in the shape the original design returned: ``statusCode``, ``headers``
    (CORS, no caching) and the JSON-RPC error as ``body``."""
    response = error_response(kind, message)
    return {
        "statusCode": response.status,
        "headers": dict(ORIGINAL_HEADERS),
        "body": response.body.decode(),
    }


# -- the functions Lambda calls ----------------------------------------------------------------

_host: LambdaHost | None = None
_broken: str | None = None


def _get_host() -> LambdaHost | None:
    global _host, _broken
    if _host is None and _broken is None:
        try:
            config = lambda_config()
        except ConfigError as exc:
            _broken = str(exc)
            log.error("configuration error: %s", exc)
            return None
        logging.getLogger("rpcbalancer").setLevel(config.log_level.upper())
        _host = LambdaHost(config)
    return _host


def handler(event: Any, context: Any) -> Any:
    """The balancer function."""
    host = _get_host()
    if host is None:
        return _original_error("internal", f"The balancer is misconfigured: {_broken}")
    return host.invoke(event, context)


def canary_handler(event: Any, context: Any) -> dict[str, Any]:
    """The canary function, run by an EventBridge schedule: one probe round into the store."""
    host = _get_host()
    if host is None:
        raise ConfigError(f"the canary is misconfigured: {_broken}")
    return host.canary_round(context)
