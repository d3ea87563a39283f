"""The admission step: who asks what, and may they.

Who: the request id (the client's ``X-Request-Id`` when it is a sane token), the client's
address (``X-Forwarded-For`` read only through trusted proxies) and API key (a header, or the
path). What: the JSON-RPC call, parsed once (:func:`~rpcbalancer.jsonrpc.parse`), with the
members the method rules refuse answered here; the client's own deadline (``X-RPC-Timeout``)
and ``Cache-Control: no-cache``. May they: a key when keys are required, and the rate limit
(one token per call). A request that ends here carries its answer (``ctx.answer``), built
through the one failure table.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import jsonrpc
from ..config import ApiKey, Config, RateLimit
from ..jsonrpc import RpcProblem
from ..messages import ALLOW, CORS, JSON, HttpRequest, HttpResponse, error_response, not_allowed
from ..observe.accesslog import RequestIds
from .access import KeyRing, MethodFilter
from .clientip import Network, client_ip
from .context import RequestContext
from .ratelimit import LocalLimiter, retry_after


class Admission:
    def __init__(
        self,
        config: Config,
        request_ids: RequestIds,
        trusted: tuple[Network, ...],
        methods: MethodFilter,
        keys: KeyRing | None,
        limiter: LocalLimiter,
        clock: Callable[[], float],
        total: float,
    ) -> None:
        self.request_ids = request_ids
        self.trusted = trusted
        self.methods = methods
        self.keys = keys
        self.limiter = limiter
        self.clock = clock
        self.total = total
        """The router's deadline: a client may ask for a shorter one, never a longer."""
        limits = config.limits
        self.max_batch = limits.max_batch
        self.max_depth = limits.max_depth
        self.rate_limit = config.rate_limit
        self.may_limit = config.rate_limit is not None or keys is not None
        """Whether any request can meet a rate limit (the global one, or a key's own)."""

    def __repr__(self) -> str:
        return f"<Admission keys={self.keys is not None} limit={self.rate_limit}>"

    def admit(self, req: HttpRequest, path: str | None, key: ApiKey | None) -> RequestContext:
        """Who asks what, and may they: the context, with its answer set when it ends here
        (the rate limit aside: :meth:`limit`)."""
        ctx = RequestContext(req, path, self.clock())
        headers = req.headers
        ctx.rid = self.request_ids.get(headers.get("x-request-id"))
        forwarded = headers.get("x-forwarded-for")
        ctx.forwarded_for = forwarded
        trusted = self.trusted
        ctx.ip = client_ip(req.peer, forwarded, trusted) if trusted else req.peer
        keys = self.keys
        allowed: Callable[[str], bool] | None = (
            self.methods.allowed if self.methods.active else None
        )
        if keys is not None:
            key = key or keys.find(headers.get(keys.header))
            if key is not None:
                allowed = keys.rules(key) or allowed
        ctx.key = key
        method = req.method
        if method == "POST" or method.upper() == "POST":
            parsed = jsonrpc.parse(
                req.body, max_batch=self.max_batch, max_depth=self.max_depth, allowed=allowed
            )
            if isinstance(parsed, RpcProblem):
                ctx.answer = HttpResponse(parsed.http_status, [JSON, *CORS], parsed.body())
                return ctx
            ctx.call = parsed
        elif method.upper() not in ("GET", "HEAD"):
            ctx.answer = not_allowed(ALLOW)
            return ctx
        if keys is not None and key is None and keys.config.required:
            message = (
                "Unauthorized: a valid API key is required "
                f"(header {keys.config.header}, or POST /KEY)"
            )
            ctx.answer = error_response(
                "unauthorized", message, ctx.call, headers=(("www-authenticate", "ApiKey"),)
            )
            return ctx
        control = headers.get("cache-control")
        if control is not None:
            ctx.no_cache = "no-cache" in control
        asked = headers.get("x-rpc-timeout")
        if asked is not None:
            self._deadline(ctx, asked)
        return ctx

    def _deadline(self, ctx: RequestContext, asked: str) -> None:
        """A client's own deadline (``X-RPC-Timeout: seconds``), when shorter than ours."""
        try:
            seconds = float(asked)
        except ValueError:
            return
        if 0 < seconds < self.total:
            ctx.deadline = ctx.start + seconds

    # -- the rate limit ------------------------------------------------------------------

    def rate_limit_of(self, ctx: RequestContext) -> RateLimit | None:
        key = ctx.key
        return key.rate_limit if key is not None and key.rate_limit else self.rate_limit

    @staticmethod
    def client_of(ctx: RequestContext) -> str:
        """Whom a rate limit counts: the key, else the address."""
        return f"key:{ctx.key.name}" if ctx.key is not None else f"ip:{ctx.ip}"

    @staticmethod
    def cost(ctx: RequestContext, limit: RateLimit) -> int:
        # One token per call; a batch larger than the bucket empties it rather than never
        # passing at all.
        call = ctx.call
        calls = len(call.methods) + len(call.rejected) if call is not None else 1
        return min(calls, limit.burst)

    def limit(self, ctx: RequestContext, wait: float | None = None) -> None:
        """Refuse ``ctx`` (set its answer) when its client is over its rate limit (``wait``:
        the shared limiter's verdict, when it was asked)."""
        limit = self.rate_limit_of(ctx)
        if limit is None:
            return
        if wait is None:
            wait = self.limiter.take(self.client_of(ctx), limit, self.cost(ctx, limit))
        if wait <= 0:
            return
        message = (
            f"Too many requests: at most {limit.rate:g} calls a second (bursts of {limit.burst}); "
            f"retry in {wait:.1f} s"
        )
        ctx.answer = error_response(
            "rate_limited", message, ctx.call, headers=(("retry-after", retry_after(wait)),)
        )
