"""The accounting step: every answered request counted (``/metrics``) and written to the
access log once the client has its answer, all read from the request's context.

An access line says who asked (request id, client address), what (the JSON-RPC method, or the
count and first methods of a batch), who answered (node, attempts, hedged), what the cache
said and which groups served, how it ended (HTTP status, outcome, error), how long it took and
how many bytes went each way. Successful requests are sampled by ``access_log.sample``;
failed ones are always written.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import orjson

from ..fleet.estimators import LATENCY_BUCKETS
from ..messages import FAILURES, HttpResponse, failure_of, outcome_of
from ..observe.accesslog import AccessLog
from ..observe.counters import Stats
from .access import KeyRing
from .context import RequestContext
from .forwarding import Outcome

BATCH_METHODS_SHOWN = 5


class Accounting:
    def __init__(
        self,
        stats: Stats,
        access: AccessLog | None,
        keys: KeyRing | None,
        clock: Callable[[], float],
        rng: random.Random,
        caching: bool,
    ) -> None:
        self.stats = stats
        self.caching = caching
        """Whether the cache's verdicts are counted (``cache.enabled``)."""
        self.access = access
        self.keys = keys
        self.clock = clock
        self.rng = rng
        self.sample = access.config.sample if access is not None else 0.0

    def __repr__(self) -> str:
        return f"<Accounting access_log={self.access is not None}>"

    def account(self, ctx: RequestContext, response: HttpResponse) -> None:
        """Count the request and log it (once the client has its answer)."""
        stats = self.stats
        outcome = ctx.outcome
        seconds = self.clock() - ctx.start
        kind = outcome_kind(outcome, response.status)
        plan = ctx.plan
        label = plan.shape.label if plan is not None else stats.method_label(ctx.call)
        key = (label, kind)
        requests = stats.requests
        requests[key] = requests.get(key, 0) + 1
        verdict = ctx.verdict
        if verdict and plan is not None and self.caching:  # a batch counts its members'
            events = stats.cache
            key = (label, verdict)
            events[key] = events.get(key, 0) + 1
        stats.duration[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.duration_sum += seconds
        stats.bytes_in += len(ctx.req.body)
        stats.bytes_out += len(response.body)
        if outcome is not None:
            attempts = len(outcome.tried)
            if outcome.hedged:
                stats.hedges += 1
                attempts -= 1
                if outcome.node is not None and outcome.node is outcome.tried[-1]:
                    stats.hedge_wins += 1
            if attempts > 1:
                stats.retries += attempts - 1
            if outcome.resent:  # a broadcast sent again, and how it ended
                ending = "duplicate" if outcome.duplicate else kind
                resent = stats.resent
                resent[ending] = resent.get(ending, 0) + 1
        access = self.access
        if access is not None and (
            kind != "ok" or self.sample >= 1.0 or self.rng.random() < self.sample
        ):
            access.write(self.access_line(ctx, response, seconds, kind))

    def access_line(
        self, ctx: RequestContext, response: HttpResponse, seconds: float, kind: str
    ) -> dict[str, Any]:
        """The access line of one request (see the module)."""
        req, call, outcome = ctx.req, ctx.call, ctx.outcome
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "id": ctx.rid,
            "ip": ctx.ip,
            "http": req.method,
            "status": response.status,
            "outcome": kind,
            "ms": round(seconds * 1000, 2),
            "in": len(req.body),
            "out": len(response.body),
        }
        if req.path != "/":
            keys = self.keys
            secret = keys is not None and keys.from_path(req.path) is not None
            line["path"] = "/[api key]" if secret else req.path[:200]
        if call is not None:
            if call.batch:
                line["batch"] = len(call.methods)
                line["methods"] = [m[:100] for m in call.methods[:BATCH_METHODS_SHOWN]]
            else:
                line["method"] = call.methods[0][:100] if call.methods else ""
        if outcome is not None:
            line["node"] = outcome.node.name if outcome.node is not None else None
            line["attempts"] = len(outcome.tried)
            if outcome.hedged:
                line["hedged"] = True
            if outcome.resent:
                line["resent"] = "duplicate" if outcome.duplicate else True
            if outcome.error is not None:
                line["error"] = str(outcome.error)[:300]
        elif ctx.nodes:
            line["node"] = ctx.nodes[0]
        if kind != "ok" and "error" not in line:
            line["error"] = _message_of(response.body)
        if ctx.verdict:
            line["cache"] = ctx.verdict  # hit, miss, coalesced, bypass
        if ctx.groups:
            line["upstream"] = ",".join(ctx.groups)
        access = self.access
        if access is not None and access.config.bodies and req.body:
            line["body"] = access.body(req.body)
        return line


def outcome_kind(outcome: Outcome | None, status: int) -> str:
    """A bounded label for how a request ended (the failure table's, or the status's)."""
    if outcome is not None and outcome.response is None:
        return FAILURES[failure_of(outcome.error)].outcome
    if outcome is not None and status >= 500:
        return "upstream_error"  # a node's own error, passed on (a broadcast's)
    return outcome_of(status)


def _message_of(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    return str(error.get("message"))[:300] if isinstance(error, dict) else None
