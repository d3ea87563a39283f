"""A probe for backends that are not chain nodes (hivemind, HAfAH): one JSON-RPC call, healthy
when it gets a result. Such a backend has no head block to compare, so no lag exclusion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...jsonrpc import request_body
from .base import Answer, ProbeCall, Reading, failure, json_of


@dataclass(frozen=True)
class CallProbe:
    chain: Any
    """The chain preset the rest (broadcasts, node faults) is taken from."""
    method: str
    params: Any = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.chain.name)

    @property
    def block_interval(self) -> float:
        return float(self.chain.block_interval)

    @property
    def metric_methods(self) -> frozenset[str]:
        return frozenset(self.chain.metric_methods)

    def probe_calls(self) -> tuple[ProbeCall, ...]:
        return (ProbeCall("head", request_body(self.method, self.params)),)

    def block_call(self, number: int) -> ProbeCall | None:
        return None  # no blocks: no fork choice

    def block_hash(self, answer: Answer) -> str | None:
        return None

    def read(self, answers: dict[str, Answer]) -> Reading:
        answer = answers.get("head")
        doc = json_of(answer)
        if isinstance(doc, dict) and "result" in doc and "error" not in doc:
            return Reading(ok=True)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return Reading(ok=False, error=f"head: {doc['error'].get('message', 'error')}")
        return Reading(ok=False, error=failure(answer, "head"))

    def is_broadcast(self, method: str) -> bool:
        return bool(self.chain.is_broadcast(method))

    def is_node_fault(self, error: dict[str, Any]) -> bool:
        return bool(self.chain.is_node_fault(error))

    def head_in(self, body: bytes) -> int | None:
        return None

    def resend(self, parts: tuple[str, ...]) -> int:
        return int(self.chain.resend(parts))

    def duplicate(self, body: bytes, params: Any) -> bytes | None:
        found = self.chain.duplicate(body, params)
        return None if found is None else bytes(found)

    def taken(self, body: bytes, params: Any) -> str | None:
        found = self.chain.taken(body, params)
        return None if found is None else str(found)

    def cap(self, name: str) -> int:
        return int(self.chain.cap(name))

    def asks(self, name: str, params: Any, head: int | None) -> int | None:
        found = self.chain.asks(name, params, head)
        return None if found is None else int(found)

    def chunk(self, name: str) -> int:
        return 0

    def span(self, name: str, params: Any, head: int | None) -> tuple[int, int] | None:
        return None

    def block_asked(self, name: str, params: Any) -> int | None:
        return None

    def reports_head(self, name: str) -> bool:
        return False  # not a chain node: its answers say nothing of a head

    def sees_writes(self, name: str) -> bool:
        return bool(self.chain.sees_writes(name))

    def reported_head(self, body: bytes) -> int | None:
        return None

    def tagged(self, name: str) -> bool:
        return False

    def pinned(
        self, name: str, params: Any, resolve: Callable[[str], int | None]
    ) -> tuple[Any, int] | None:
        return None

    def named_block(self, name: str, body: bytes) -> int | None:
        return None

    def head_result(self, head: int) -> bytes | None:
        return None

    def empty_is_unsure(
        self, method: str, params: Any, best_head: Callable[[], int | None]
    ) -> bool:
        return False
