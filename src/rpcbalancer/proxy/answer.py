"""The answer step: the client's HTTP response from the request's context.

Three kinds of answer reach a client, all built here:

* a node's own answer, passed on byte for byte (its ``Content-Type``, ``Cache-Control`` and
  ``Retry-After`` kept), with ``X-RPC-Node``, ``X-RPC-Attempts``, ``X-RPC-Hedged`` and
  ``X-RPC-Node-Version``;
* an answer made here: a cache hit, a coalesced read with the client's id, a batch put back
  together (``X-RPC-Node`` names every node that served a part);
* a failure, from the one failure table (:func:`~rpcbalancer.messages.error_response`): no
  node could serve, every try failed, the deadline passed.

Each carries ``X-RPC-Upstream`` (the groups) and ``X-Cache`` (the cache's verdict) when there
are any, and ``X-Request-Id``. Batch members refused at admission are added back to the
batch's answer; with ``annotate: body`` a JSON object answer gains the original design's
``__server__`` and ``__version__``. The small pieces of answering live here too: a forwarded
path made safe, and an awaited answer handed to a callback.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections.abc import Callable

from .. import jsonrpc
from ..fleet.fleet import FleetSet
from ..fleet.nodes import Node
from ..fleet.policies import BasePolicy
from ..health.versions import Versions
from ..jsonrpc import RpcCall
from ..messages import (
    CORS,
    JSON,
    HttpRequest,
    HttpResponse,
    Reply,
    error_response,
    failure_of,
    internal_error,
)
from .context import RequestContext
from .forwarding import Outcome

log = logging.getLogger(__name__)

ATTEMPTS = ("x-rpc-attempts", "1")
"""The usual count, made once (as the headers below: answers are many, their headers few)."""
HEDGED = ("x-rpc-hedged", "1")
VERDICTS = {v: ("x-cache", v) for v in ("hit", "miss", "coalesced", "bypass")}
MEMO = 1024
"""Headers kept made, per group list and per node name (bounded: DNS can add nodes)."""


class Answerer:
    def __init__(
        self,
        annotate: str,
        explain: bool,
        versions: Versions,
        clock: Callable[[], float],
        fleet: FleetSet,
        policy: BasePolicy,
        nodes: dict[str, Node],
        total: float,
        resume: Callable[[RequestContext], None],
    ) -> None:
        self.annotate_body = annotate == "body"
        """``annotate: body``: the original design's ``__server__``/``__version__``."""
        self.explain = explain
        self.versions = versions
        self.clock = clock
        self.fleet = fleet
        """Every group's nodes (``X-RPC-Scores`` scores the usable ones)."""
        self.policy = policy
        """The default group's (``X-RPC-Scores`` explains it)."""
        self.nodes = nodes
        """Every node by name (the node of a hit, for ``__version__``)."""
        self.total = total
        """The router's deadline: a wait for a version ends within it."""
        self.resume = resume
        """Where a request goes on once its node's version is known (the gateway)."""
        self._upstream: dict[tuple[str, ...], tuple[str, str]] = {}
        self._nodes: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"<Answerer annotate={'body' if self.annotate_body else 'headers'}>"

    def build(self, ctx: RequestContext, wait: bool = True) -> HttpResponse | None:
        """The response to ``ctx`` as it stands (the node's answer, one made here, or the
        failure that ended it); None while it waits for its node's version (``annotate:
        body``: the node is asked once, within the deadline, then :attr:`resume` is called;
        ``wait=False``: the version is what it is by then)."""
        early = ctx.answer
        if early is not None:
            early.headers.append(("x-request-id", ctx.rid))
            return early
        if self.annotate_body and wait:
            node = self.serving(ctx)
            if node is not None:
                now = self.clock()
                if not self.versions.known(node, now)[0]:
                    left = max(0.001, ctx.start + self.total - now)
                    resume = self.resume
                    ctx.stage = self.versions.ask(node, left, lambda _answer: resume(ctx))
                    return None
        outcome = ctx.outcome
        if ctx.body is None and outcome is not None:
            response = self._passed_on(ctx, outcome)
        else:
            response = self._made_here(ctx)
        headers = response.headers
        groups = ctx.groups
        if groups:
            upstream = self._upstream.get(groups)
            if upstream is None:
                upstream = ("x-rpc-upstream", ",".join(groups))
                if len(self._upstream) < MEMO:
                    self._upstream[groups] = upstream
            headers.append(upstream)
        verdict = ctx.verdict
        if verdict:
            headers.append(VERDICTS.get(verdict) or ("x-cache", verdict))
        headers.append(("x-request-id", ctx.rid))
        return response

    def _node(self, name: str) -> tuple[str, str]:
        """The ``X-RPC-Node`` header of a node (made once per name)."""
        header = self._nodes.get(name)
        if header is None:
            header = ("x-rpc-node", name)
            if len(self._nodes) < MEMO:
                self._nodes[name] = header
        return header

    def serving(self, ctx: RequestContext) -> Node | None:
        """The node whose version an ``annotate: body`` answer carries (a single call's),
        or None."""
        call = ctx.call
        if call is not None and call.batch:
            return None
        if ctx.body is None:
            outcome = ctx.outcome
            if outcome is None or outcome.response is None:
                return None
            return outcome.node
        return self.nodes.get(ctx.nodes[0]) if ctx.nodes else None

    def _made_here(self, ctx: RequestContext) -> HttpResponse:
        call = ctx.call
        body = ctx.body or b""
        if call is not None:
            if call.silent and ctx.status < 400:  # notifications only: no answer
                return HttpResponse(204, [CORS[0]])
            if call.rejected:
                body = with_rejected(body, call)
        headers = [JSON, *CORS]
        nodes = ctx.nodes
        if nodes:
            if len(nodes) > 1:
                nodes = tuple(dict.fromkeys(nodes))
            headers.append(self._node(", ".join(nodes) if len(nodes) > 1 else nodes[0]))
            if self.annotate_body and call is not None and not call.batch:
                node = self.nodes.get(nodes[0])
                version = None
                if node is not None:
                    version = self.versions.known(node, self.clock())[1]
                body = annotate(body, nodes[0], version)
        return HttpResponse(ctx.status, headers, body)

    def _passed_on(self, ctx: RequestContext, outcome: Outcome) -> HttpResponse:
        """A node's answer passed on, or the failure that ended the forwarding."""
        call = ctx.call
        resp, node = outcome.response, outcome.node
        if resp is None or node is None:
            tries = outcome.attempts
            error = outcome.error
            kind = failure_of(error)
            plural = "try" if tries == 1 else "tries"
            if kind == "no_node":
                prefix = "Service unavailable"
            elif kind == "timeout":
                prefix = f"Upstream timeout after {tries} {plural}"
            else:
                prefix = f"Upstream failed after {tries} {plural}"
            message = f"{prefix}: {error}" if error is not None else f"{prefix}: no node answered"
            return error_response(kind, message, call, headers=(("x-rpc-attempts", str(tries)),))
        kept = resp.headers
        if len(kept) == 1 and kept[0] == JSON:  # the usual case
            headers = [JSON, *CORS]
        elif len(kept) == 1 and kept[0][0] == "content-type":
            headers = [kept[0], *CORS]
        else:
            headers = [("content-type", resp.content_type), *CORS]
            headers += [(k, v) for k, v in kept if k != "content-type"]
        headers.append(self._node(node.name))
        tries = len(outcome.tried)
        headers.append(ATTEMPTS if tries == 1 else ("x-rpc-attempts", str(tries)))
        if outcome.hedged:
            headers.append(HEDGED)
        probe = node.probe
        if probe is not None and probe.version:
            headers.append(("x-rpc-node-version", probe.version))
        body = resp.body
        if self.annotate_body:
            body = annotate(body, node.name, self.versions.known(node, self.clock())[1])
        status = resp.status
        if call is not None and status < 400:
            if call.silent:  # notifications only: the spec gives them no answer
                return HttpResponse(204, [CORS[0]])
            if call.rejected:
                body = with_rejected(body, call)
        response = HttpResponse(status, headers, body)
        if self.explain and ctx.req.headers.get("x-rpc-explain") == "1":
            headers.append(("x-rpc-scores", self.scores()))
        return response

    def scores(self) -> str:
        """``name=score`` for each usable node (lower wins), or how the policy picks."""
        policy = self.policy
        now = self.clock()
        nodes, _ = self.fleet.candidates(now)
        parts = []
        for node in nodes:
            score, _ = policy.explain(node, now)
            if score is not None:
                parts.append(f"{node.name}={score:.6g}")
        return "; ".join(parts) if parts else f"{policy.name}: {policy.how}"


def with_rejected(body: bytes, call: RpcCall) -> bytes:
    """A batch's answer with the answers of the members refused at admission added (the
    node's own answers kept exact, integers beyond 64 bits included)."""
    try:
        answers = jsonrpc.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(answers, list):
        answers = [answers]
    return jsonrpc.dumps(answers + jsonrpc.rejected_answers(call))


def annotate(body: bytes, server: str, version: object) -> bytes:
    """The original design's reply: a JSON object gains ``__server__`` and ``__version__``.
    Anything else (a batch array, a non-JSON body) is returned as it is. The node's own
    bytes are kept (big integers stay exact): the two fields are added at the object's end,
    so they win over any copy the node sent itself."""
    text = body.strip()
    if text[:1] != b"{" or text[-1:] != b"}":
        return body
    try:
        doc = jsonrpc.loads(text)
    except (ValueError, RecursionError):
        return body
    if not isinstance(doc, dict):
        return body
    added = jsonrpc.dumps({"__server__": server, "__version__": version})[1:-1]
    inside = text[1:-1].strip()
    return b"{" + inside + (b"," if inside else b"") + added + b"}"


def reply_with(task: asyncio.Future[HttpResponse], req: HttpRequest, reply: Reply) -> None:
    """Hand an awaited answer to a callback (a crash becomes a 500, logged)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("unexpected error answering %s %s", req.method, req.path, exc_info=exc)
        reply(internal_error())
        return
    reply(task.result())


def safe_path(path: str) -> str | None:
    """A client path fit to append to a node URL: absolute, normalised, no way up."""
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    segments = path.split("/")
    if ".." in segments or "." in segments:
        return None
    normal = posixpath.normpath(path)
    return normal if normal.startswith("/") and not normal.startswith("//") else None
