"""The routes that are not the proxy: ``/health``, ``/version``, ``/status.json``, the
``/status`` page and its ``/status/history.json``, ``/metrics``, CORS preflight, and the
operator's ``POST /admin/reload`` and ``POST /admin/nodes/{name}/drain`` (``undrain``).

They read the balancer's state and never touch a node; the history reads the health store
(at most every ``HISTORY_CACHE_S`` seconds per window, whatever number of pages are open).
The operator's routes are served only when ``admin.key`` is set, to requests that carry it
(``Authorization: Bearer KEY``); what they do is the host's (:class:`Operator`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import orjson

from .. import __version__, build
from ..config import parse_duration
from ..messages import ALLOW, CORS, JSON, HttpRequest, HttpResponse, error_response, not_allowed
from ..observe import doctorlai
from ..observe.metrics import PROMETHEUS_TYPE, render
from ..observe.statuspage import PAGE_SECURITY, STATUS_PAGE
from ..observe.views import health_doc, history_doc, status_doc

if TYPE_CHECKING:
    from ..balancer import Balancer

HISTORY_CACHE_S = 20.0
"""Seconds a history answer is reused: many open pages must not mean many store reads."""
HISTORY_CACHE_ENTRIES = 8
NO_STORE = (("cache-control", "no-store"),)


def json_response(status: int, doc: Any, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, [JSON, *CORS, *extra], orjson.dumps(doc))


class Operator(Protocol):
    """What the host does for the operator's routes (the standalone server's
    :class:`~..hosts.live.Live`)."""

    async def reload(self) -> dict[str, Any]:
        """Read the configuration again and apply it; what changed. Raises
        :class:`~..errors.ConfigError` (the old one keeps serving)."""
        ...

    def drain(self, name: str, drained: bool) -> dict[str, Any]:
        """Drain a node (or put it back) by its name or URL; raises ``KeyError``."""
        ...


class Control:
    """The control routes of one balancer."""

    def __init__(self, balancer: Balancer, operator: Operator | None = None) -> None:
        self.balancer = balancer
        self.operator = operator
        """The host's reload and drain (None: drains here, and no reload)."""
        key = balancer.config.admin.key
        self.admin_key = key.encode() if key else None
        self.routes: dict[str, Callable[[], HttpResponse]] = {
            "/health": self.health,
            "/version": self.version,
            "/status.json": self.status,
            "/status": self.page,
        }
        if balancer.config.metrics.enabled:
            self.routes["/metrics"] = self.metrics
        self._history_cache: dict[float, tuple[float, dict[str, Any]]] = {}

    def serves(self, path: str) -> bool:
        if path.startswith("/admin/"):
            return self.admin_key is not None  # (never open without a key)
        return path in self.routes or path == "/status/history.json"

    async def answer(self, req: HttpRequest) -> HttpResponse:
        if req.path.startswith("/admin/"):
            return await self.admin(req)
        if req.method.upper() not in ("GET", "HEAD"):
            return not_allowed("GET, HEAD, OPTIONS")
        route = self.routes.get(req.path)
        return route() if route is not None else await self.history(req)

    def health(self) -> HttpResponse:
        if self.balancer.config.compat == "doctorlai":  # always 200: the process is up
            return json_response(200, doctorlai.health_doc(self.balancer), NO_STORE)
        ok, doc = health_doc(self.balancer.fleet, self.balancer.clock())
        return json_response(200 if ok else 503, doc)

    def version(self) -> HttpResponse:
        config = self.balancer.config
        doc: dict[str, Any] = {
            "name": "rpcbalancer",
            "version": __version__,
            "build": build(),
            "chain": config.chain,
            "strategy": config.strategy.name,
        }
        if config.deployment_version is not None:
            doc["deployment"] = config.deployment_version
        if config.compat == "doctorlai":  # its monitoring reads the deployment's as version
            doc = {"version": doctorlai.label(self.balancer), "rpcbalancer": __version__}
        return json_response(200, doc, NO_STORE)

    def status(self) -> HttpResponse:
        return json_response(200, status_doc(self.balancer), (("cache-control", "no-store"),))

    def page(self) -> HttpResponse:
        headers = [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
            *PAGE_SECURITY,
        ]
        return HttpResponse(200, headers, STATUS_PAGE)

    def metrics(self) -> HttpResponse:
        b = self.balancer
        body = render(b, b.stats, b.snapshots)
        return HttpResponse(200, [("content-type", PROMETHEUS_TYPE)], body)

    async def admin(self, req: HttpRequest) -> HttpResponse:
        """The operator's routes: the key first, then ``POST`` only."""
        from ..errors import ConfigError

        given = req.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        wanted = self.admin_key
        if (
            wanted is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(token.strip().encode(), wanted)
        ):
            return json_response(401, {"error": "the admin key is missing or wrong"})
        if req.method.upper() != "POST":
            return not_allowed("POST")
        parts = req.path.strip("/").split("/")
        if parts == ["admin", "reload"]:
            if self.operator is None:
                return json_response(501, {"error": "this host cannot reload; restart it"})
            try:
                done = await self.operator.reload()
            except ConfigError as exc:
                return json_response(400, {"reloaded": False, "error": str(exc)})
            return json_response(200, done)
        if len(parts) == 4 and parts[:2] == ["admin", "nodes"] and parts[3] in DRAIN:
            drained, name = parts[3] == "drain", unquote(parts[2])
            try:
                if self.operator is not None:
                    return json_response(200, self.operator.drain(name, drained))
                return json_response(200, drain(self.balancer, name, drained))
            except KeyError:
                return json_response(404, {"error": f"no node named {name!r}"})
        return json_response(404, {"error": f"not an admin route: {req.path}"})

    async def history(self, req: HttpRequest) -> HttpResponse:
        """The canary's history from the store, bucketed for the status page's charts."""
        window = 3 * 3600.0
        for part in req.query.split("&"):
            name, _, value = part.partition("=")
            if name == "window":
                try:
                    window = min(7 * 86400.0, parse_duration(value))
                except ValueError as exc:
                    return error_response("invalid_params", str(exc))
        store = self.balancer.store
        until = time.time()
        if store is None:
            doc = {"since": until - window, "until": until, "nodes": {}, "note": "no health store"}
            return json_response(200, doc)
        cache = self._history_cache
        cached = cache.get(window)
        if cached is not None and until - cached[0] < HISTORY_CACHE_S:
            return json_response(200, cached[1])
        try:
            records = await store.history(until - window)
        except Exception as exc:
            why = f"the health store cannot be read: {type(exc).__name__}"
            return json_response(503, {"error": why})
        doc = history_doc(records, self.balancer.fleet, since=until - window, until=until)
        if len(cache) >= HISTORY_CACHE_ENTRIES:  # clients choose the window: keep few
            cache.clear()
        cache[window] = (until, doc)
        return json_response(200, doc)


DRAIN = ("drain", "undrain")


def drain(balancer: Balancer, name: str, drained: bool) -> dict[str, Any]:
    """Drain the nodes named ``name`` (by name or URL, in every group), or put them back;
    ``KeyError`` when there is none."""
    found = [n for n in balancer.fleet.nodes if name in (n.name, n.url)]
    if not found:
        raise KeyError(name)
    for node in found:
        node.drain(drained)
    inflight = sum(node.inflight for node in found)
    return {"node": name, "drained": drained, "inflight": inflight}


def preflight(req: HttpRequest) -> HttpResponse:
    asked = req.headers.get("access-control-request-headers", "content-type")
    return HttpResponse(
        204,
        [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", ALLOW),
            ("access-control-allow-headers", asked[:1024]),
            ("access-control-max-age", "86400"),
            ("allow", ALLOW),
        ],
    )
