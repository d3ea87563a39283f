"""Steem and its forks (Hive, Blurt): jussi status, dynamic global properties, version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...jsonrpc import dumps, loads, number_after, request_body
from .base import (
    AGAIN,
    CONFIRMED,
    NEVER,
    Answer,
    ProbeCall,
    Reading,
    failure,
    json_of,
    sick_message,
)

_BROADCAST_PREFIXES = (
    "condenser_api.broadcast_transaction",
    "condenser_api.broadcast_block",
    "network_broadcast_api.",
    "broadcast_transaction",
)

_TRANSACTION_APIS = frozenset({"condenser_api", "network_broadcast_api"})

_BLIND = frozenset(
    {
        "get_dynamic_global_properties",
        "get_config",
        "get_version",
        "get_chain_properties",
        "get_hardfork_version",
        "get_next_scheduled_hardfork",
        "get_current_median_history_price",
        "get_feed_history",
        "get_reward_fund",
        "get_witness_schedule",
        "get_active_witnesses",
        "get_block",
        "get_block_header",
        "get_ops_in_block",
        "get_block_range",
        "get_methods",
    }
)
"""Calls no transaction of a client's changes the answer to (the head they report is held by
:mod:`~rpcbalancer.proxy.heads`; a block is asked for by number, and a block a client was
shown is never answered null)."""

_CAPS = {"get_account_history": 1000, "get_block_range": 1000}
"""What one call may ask for at most on a public endpoint (the nodes' own limits)."""
_ASKED = {"get_account_history": ("limit", 2), "get_block_range": ("count", 1)}
"""Where a call says how much it asks for: its key in named params, its index in a list."""


_COMMON = (
    "get_dynamic_global_properties",
    "get_block",
    "get_block_header",
    "get_ops_in_block",
    "get_accounts",
    "lookup_accounts",
    "get_account_history",
    "get_content",
    "get_content_replies",
    "get_active_votes",
    "get_discussions_by_created",
    "get_discussions_by_trending",
    "get_discussions_by_blog",
    "get_discussions_by_feed",
    "get_followers",
    "get_following",
    "get_follow_count",
    "get_config",
    "get_version",
    "get_chain_properties",
    "get_current_median_history_price",
    "get_reward_fund",
    "get_witness_by_account",
    "get_witnesses_by_vote",
    "get_state",
    "get_transaction",
    "broadcast_transaction",
    "broadcast_transaction_synchronous",
)
_METHODS = frozenset(
    [f"condenser_api.{m}" for m in _COMMON]
    + [f"database_api.{m}" for m in _COMMON]
    + [f"network_broadcast_api.{m}" for m in _COMMON if m.startswith("broadcast")]
    + ["call", "block_api.get_block", "block_api.get_block_range", "rc_api.find_rc_accounts"]
)


@dataclass(frozen=True)
class SteemLike:
    name: str = "steem"
    block_interval: float = 3.0
    metric_methods: frozenset[str] = _METHODS

    def probe_calls(self) -> tuple[ProbeCall, ...]:
        return (
            ProbeCall("status"),
            ProbeCall("head", request_body("condenser_api.get_dynamic_global_properties")),
            ProbeCall("version", request_body("condenser_api.get_version")),
        )

    def read(self, answers: dict[str, Answer]) -> Reading:
        status = answers.get("status")
        status_doc = json_of(status)
        # jussi answers GET / with {"status": "OK", "jussi_num": N}. A bare steemd has no such
        # page; only a status page that says something other than OK marks the node down.
        if isinstance(status_doc, dict) and "status" in status_doc:
            if status_doc.get("status") != "OK":
                return Reading(ok=False, error=f"status: {status_doc.get('status')!r}, not 'OK'")
        elif status is not None and status.status >= 500:
            return Reading(ok=False, error=failure(status, "status"))

        head = answers.get("head")
        head_doc = json_of(head)
        props = head_doc.get("result") if isinstance(head_doc, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get("head_block_number"), int):
            why = failure(head, "head")
            if isinstance(head_doc, dict) and isinstance(head_doc.get("error"), dict):
                why = f"head: {head_doc['error'].get('message', 'JSON-RPC error')}"
            return Reading(ok=False, error=why)
        head_time = _parse_time(props.get("time"))
        irreversible = props.get("last_irreversible_block_num")

        version_doc = json_of(answers.get("version"))
        version = None
        if isinstance(version_doc, dict) and isinstance(version_doc.get("result"), dict):
            raw = version_doc["result"].get("blockchain_version")
            version = raw if isinstance(raw, str) else None
        if version is None:
            version_doc = None
        head_id = props.get("head_block_id")
        return Reading(
            ok=True,
            head_block=props["head_block_number"],
            head_time=head_time,
            irreversible_block=irreversible if isinstance(irreversible, int) else None,
            version=version,
            version_doc=version_doc,
            head_hash=head_id if isinstance(head_id, str) and head_id else None,
        )

    def block_call(self, number: int) -> ProbeCall | None:
        # The next block's header names this one's id as its ``previous``: a header is small
        # where a whole block is not, and fork choice asks only nodes past ``number``.
        return ProbeCall("block", request_body("condenser_api.get_block_header", [number + 1]))

    def block_hash(self, answer: Answer) -> str | None:
        doc = json_of(answer)
        header = doc.get("result") if isinstance(doc, dict) else None
        previous = header.get("previous") if isinstance(header, dict) else None
        return previous if isinstance(previous, str) and previous else None

    def is_broadcast(self, method: str) -> bool:
        return method.startswith(_BROADCAST_PREFIXES)

    def is_node_fault(self, error: dict[str, Any]) -> bool:
        return sick_message(error)

    def empty_is_unsure(
        self, method: str, params: Any, best_head: Callable[[], int | None]
    ) -> bool:
        name = method.rpartition(".")[2]
        if method == "call" and isinstance(params, list) and len(params) >= 2:
            name = str(params[1])
            params = params[2] if len(params) > 2 else []
        if name == "get_transaction":
            return True
        if name in ("get_block", "get_block_header"):
            number = params[0] if isinstance(params, list) and params else None
            if isinstance(params, dict):
                number = params.get("block_num")
            if not isinstance(number, int) or number < 1:
                return False
            # A block the chain has reached, that a lagging node has not: ask another.
            head = best_head()
            return head is not None and number <= head
        return False

    def head_in(self, body: bytes) -> int | None:
        if b'"head_block_number"' not in body:
            return None
        return number_after(body, b'"head_block_number"')

    def resend(self, parts: tuple[str, ...]) -> int:
        # A signed transaction's id is the hash of its bytes: a node that has it refuses it
        # ("Duplicate transaction check failed"). Only the APIs known to take transactions;
        # a ``call`` to a numbered API or a legacy bare name is never sent twice.
        if len(parts) < 2 or parts[-2] not in _TRANSACTION_APIS:
            return NEVER
        if parts[-1] == "broadcast_transaction":
            return AGAIN
        if parts[-1] == "broadcast_transaction_synchronous":
            return CONFIRMED
        return NEVER

    def duplicate(self, body: bytes, params: Any) -> bytes | None:
        if b"Duplicate transaction check failed" not in body:
            return None
        try:
            doc = loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
            return None
        # ``broadcast_transaction``'s answer when the node takes it: an empty object.
        return dumps({"jsonrpc": "2.0", "result": {}, "id": doc.get("id")})

    def taken(self, body: bytes, params: Any) -> str | None:
        return None  # a transaction in a block is still a duplicate ("already have it")

    def cap(self, name: str) -> int:
        return _CAPS.get(name, 0)

    def asks(self, name: str, params: Any, head: int | None) -> int | None:
        # get_account_history: [account, start, limit] or {account, start, limit};
        # get_block_range: {starting_block_num, count}.
        key, at = _ASKED.get(name, ("", -1))
        if isinstance(params, dict):
            value = params.get(key)
        elif isinstance(params, list) and 0 <= at < len(params):
            value = params[at]
        else:
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def chunk(self, name: str) -> int:
        return 0

    def span(self, name: str, params: Any, head: int | None) -> tuple[int, int] | None:
        return None

    def block_asked(self, name: str, params: Any) -> int | None:
        if name not in ("get_block", "get_block_header"):
            return None
        number = params[0] if isinstance(params, list) and params else None
        if isinstance(params, dict):
            number = params.get("block_num")
        return number if isinstance(number, int) and not isinstance(number, bool) else None

    def reports_head(self, name: str) -> bool:
        return name == "get_dynamic_global_properties"

    def reported_head(self, body: bytes) -> int | None:
        return self.head_in(body)

    def sees_writes(self, name: str) -> bool:
        return name not in _BLIND

    def tagged(self, name: str) -> bool:
        return False  # blocks are asked for by number

    def pinned(
        self, name: str, params: Any, resolve: Callable[[str], int | None]
    ) -> tuple[Any, int] | None:
        return None

    def named_block(self, name: str, body: bytes) -> int | None:
        if name != "broadcast_transaction_synchronous":
            return None
        return number_after(body, b'"block_num"')  # the block that holds it

    def head_result(self, head: int) -> bytes | None:
        return None  # the head comes with the rest of the chain's properties


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC).timestamp()
