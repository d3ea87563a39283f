"""What a chain preset is: its probe calls and how to read their answers.

Reading is sans-IO: a preset turns the raw answers of its probe calls into a
:class:`Reading`; the probe loop does the I/O and the timing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class ProbeCall:
    """One call a probe makes: ``GET /`` when ``body`` is None, else a JSON-RPC POST."""

    name: str
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What one probe call got back, or why it got nothing."""

    status: int = 0
    body: bytes = b""
    error: str | None = None
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    """What a node's probe answers say about it."""

    ok: bool
    error: str | None = None
    head_block: int | None = None
    head_time: float | None = None
    """Unix time of the head block, when the chain reports it."""
    irreversible_block: int | None = None
    version: str | None = None
    version_doc: Any = None
    """The version call's whole answer (the original design's ``__version__``)."""
    head_hash: str | None = None
    """The head block's hash (its id), for fork choice."""
    parent_hash: str | None = None
    """The hash of the block before the head, when the head call shows it."""


NEVER: Final = 0
"""A broadcast that is never sent twice: the chain might run it twice."""
AGAIN: Final = 1
"""A broadcast the chain refuses to take twice (a signed transaction, by its id or hash):
when its fate is unknown it goes to another node, and "already have it" means success."""
CONFIRMED: Final = 2
"""As :data:`AGAIN`, but its answer is a confirmation of inclusion (a synchronous
broadcast): "already have it" is not one, so it is never turned into success."""


class Chain(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def block_interval(self) -> float: ...

    @property
    def metric_methods(self) -> frozenset[str]:
        """Methods common enough to be metric labels; others count as ``other``, so clients
        cannot grow the label set."""
        ...

    def probe_calls(self) -> tuple[ProbeCall, ...]: ...

    def read(self, answers: dict[str, Answer]) -> Reading: ...

    def block_call(self, number: int) -> ProbeCall | None:
        """The call that reads the hash of block ``number`` from a node past it (fork choice
        asks it when no other node's hash is known at a node's head), or None where blocks
        have none."""
        ...

    def block_hash(self, answer: Answer) -> str | None:
        """The block hash in an answer to :meth:`block_call`, or None."""
        ...

    def is_broadcast(self, method: str) -> bool: ...

    def is_node_fault(self, error: dict[str, Any]) -> bool: ...

    def head_in(self, body: bytes) -> int | None:
        """The head block an answer passing through reports, if it reports one (sans-IO,
        cheap: a byte search first)."""
        ...

    def chunk(self, name: str) -> int:
        """Blocks per chunk when a call of this name over more blocks is split across nodes
        (0: it is never split)."""
        ...

    def span(self, name: str, params: Any, head: int | None) -> tuple[int, int] | None:
        """The first and last block a call of this name spans (``head`` resolves tags)."""
        ...

    def block_asked(self, name: str, params: Any) -> int | None:
        """The number of the block a call of this name asks for (``get_block``,
        ``eth_getBlockByNumber``), or None."""
        ...

    def reports_head(self, name: str) -> bool:
        """Whether a call of this name (the method's last part: ``get_dynamic_global_properties``,
        ``eth_blockNumber``) answers with the head block, so that a client polls it to learn
        how far the chain has gone (and must never see it go back)."""
        ...

    def reported_head(self, body: bytes) -> int | None:
        """The head block an answer to such a call reports (its whole body, or its result
        alone), or None."""
        ...

    def sees_writes(self, name: str) -> bool:
        """Whether a call of this name may read what a client's own transaction changed
        (accounts, balances, nonces, the transaction): after a broadcast, that client's calls
        of it follow the broadcast (:mod:`~rpcbalancer.proxy.writes`). False for what no
        transaction changes (the chain's properties, a block by number, the node's version)."""
        ...

    def tagged(self, name: str) -> bool:
        """Whether a call of this name may read at a block named by a tag (EVM's ``latest``,
        ``safe``, ``finalized``): the balancer resolves such a tag to a number
        (:meth:`pinned`)."""
        ...

    def pinned(
        self, name: str, params: Any, resolve: Callable[[str], int | None]
    ) -> tuple[Any, int] | None:
        """``params`` with each block tag they read at (``latest``, also when the block is
        left out; ``safe``, ``finalized``) replaced by the number ``resolve(tag)`` gives, and
        the highest number put in; None when they name no such tag or a tag stays
        unresolved (then the call goes as asked)."""
        ...

    def named_block(self, name: str, body: bytes) -> int | None:
        """The block an answer to a call of this name shows exists (a receipt's block, a
        block's number), or None."""
        ...

    def head_result(self, head: int) -> bytes | None:
        """The ``result`` (JSON text) a call that :meth:`reports_head` answers for ``head``,
        when the balancer can say it itself (EVM's ``eth_blockNumber``), else None."""
        ...

    def resend(self, parts: tuple[str, ...]) -> int:
        """How a broadcast of this name (as routes read it) may be sent again when its fate
        is unknown: :data:`NEVER`, :data:`AGAIN` or :data:`CONFIRMED`."""
        ...

    def duplicate(self, body: bytes, params: Any) -> bytes | None:
        """For an answer that says the node already has the transaction (sent with
        ``params``), the success it stands for (an :data:`AGAIN` broadcast's usual answer,
        with the answer's id); None for any other answer. (For a :data:`CONFIRMED` broadcast
        it is no success.)"""
        ...

    def taken(self, body: bytes, params: Any) -> str | None:
        """For an answer to a transaction sent again (with ``params``) that may mean the
        chain has it already in a block (EVM: "nonce too low"), the transaction's hash to
        look it up by (``eth_getTransactionByHash``); None for any other answer."""
        ...

    def cap(self, name: str) -> int:
        """The most a call of this name (the method's last part) may ask for on a public
        endpoint, or 0 when the preset does not count it (see :meth:`asks`)."""
        ...

    def asks(self, name: str, params: Any, head: int | None) -> int | None:
        """How much a call of this name asks for (items, blocks), for a name :meth:`cap`
        counts; ``head`` resolves block tags; None when it cannot be told."""
        ...

    def empty_is_unsure(
        self, method: str, params: Any, best_head: Callable[[], int | None]
    ) -> bool:
        """Whether a ``null`` answer to this call may only mean that the node that gave it
        does not have it yet, so that another node should be asked."""
        ...


# Errors that mean the node is unwell, whatever the chain: retrying elsewhere may succeed.
_SICK = re.compile(
    r"unable to acquire|lock timeout|database lock|timed? ?out|upstream|internal server error"
    r"|bad gateway|service unavailable|too many requests|rate limit|not yet synced|syncing",
    re.IGNORECASE,
)


def sick_message(error: dict[str, Any]) -> bool:
    message = error.get("message")
    data = error.get("data")
    text = message if isinstance(message, str) else ""
    if isinstance(data, str):
        text += " " + data
    elif isinstance(data, dict) and isinstance(data.get("message"), str):
        text += " " + data["message"]
    return bool(_SICK.search(text))


def json_of(answer: Answer | None) -> Any:
    """The parsed body of a successful answer, or None."""
    if answer is None or answer.error is not None or not 200 <= answer.status < 300:
        return None
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None


def failure(answer: Answer | None, what: str) -> str:
    """Why a probe call did not give a usable answer, for people."""
    if answer is None:
        return f"{what}: not asked"
    if answer.error is not None:
        return f"{what}: {answer.error}"
    if not 200 <= answer.status < 300:
        return f"{what}: HTTP {answer.status}"
    return f"{what}: answer is not JSON-RPC"
