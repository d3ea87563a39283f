"""The routes that are not the proxy: ``/health``, ``/version``, ``/status.json``, the
``/status`` page and its ``/status/history.json``, ``/metrics``, and CORS preflight.

They read the balancer's state and never touch a node; the history reads the health store
(at most every ``HISTORY_CACHE_S`` seconds per window, whatever number of pages are open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .. import __version__, build
from ..config import parse_duration
from ..messages import ALLOW, CORS, JSON, HttpRequest, HttpResponse, error_response, not_allowed
from ..observe.metrics import PROMETHEUS_TYPE, render
from ..observe.statuspage import PAGE_SECURITY, STATUS_PAGE
from ..observe.views import health_doc, history_doc, status_doc

if TYPE_CHECKING:
    from ..balancer import Balancer

HISTORY_CACHE_S = 20.0
"""Seconds a history answer is reused: many open pages must not mean many store reads."""
HISTORY_CACHE_ENTRIES = 8


def json_response(status: int, doc: Any, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, [JSON, *CORS, *extra], orjson.dumps(doc))


class Control:
    """The control routes of one balancer."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
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
        return path in self.routes or path == "/status/history.json"

    async def answer(self, req: HttpRequest) -> HttpResponse:
        if req.method.upper() not in ("GET", "HEAD"):
            return not_allowed("GET, HEAD, OPTIONS")
        route = self.routes.get(req.path)
        return route() if route is not None else await self.history(req)

    def health(self) -> HttpResponse:
        ok, doc = health_doc(self.balancer.fleet, self.balancer.clock())
        return json_response(200 if ok else 503, doc)

    def version(self) -> HttpResponse:
        config = self.balancer.config
        return json_response(
            200,
            {
                "name": "rpcbalancer",
                "version": __version__,
                "build": build(),
                "chain": config.chain,
                "strategy": config.strategy.name,
            },
        )

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
