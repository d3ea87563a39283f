"""What may be cached, for how long, and what an answer must be to be kept (sans-IO).

A chain preset knows its methods: :func:`default_ttl` gives each one the TTL that makes
``cache: {enabled: true}`` right without routes (blocks forever once irreversible, dynamic
global properties about a second, config and version a minute, accounts and content a few
seconds, broadcasts never; on EVM, by-hash lookups forever once found, by-number ones forever
once final, tags never). Routes override it.

:func:`block_of` finds the block a block-bound call is about (from its parameters), and
:func:`storable` judges an answer: never an error, never an empty result (``null``, ``[]``,
``{}``, an empty block list), never a block whose number in the answer is not the one asked
for. Whether a block is irreversible is decided per answer, by the node that served it
(:class:`Finality` holds what is known of the chain's head and last irreversible block; it
never moves backwards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config.ttl import FOREVER, IF_IRREVERSIBLE, NO_CACHE

_STEEM_FOREVER_ONCE_IRREVERSIBLE = frozenset(
    {"get_block", "get_block_header", "get_ops_in_block", "get_block_range"}
)
_STEEM_SECOND = frozenset(
    {
        "get_dynamic_global_properties",
        "get_current_median_history_price",
        "get_feed_history",
        "get_witness_schedule",
        "get_active_witnesses",
        "get_ticker",
        "get_order_book",
        "get_reward_fund",
        "get_reward_funds",
        "db_head_state",
    }
)
_STEEM_MINUTE = frozenset(
    {
        "get_config",
        "get_version",
        "get_hardfork_version",
        "get_next_scheduled_hardfork",
        "get_hardfork_properties",
        "get_chain_properties",
        "get_witness_count",
        "get_account_count",
        "get_methods",
        "get_signature",
        "get_resource_params",
        "get_info",
    }
)
_STEEM_FEW_SECONDS = frozenset(
    {
        "get_accounts",
        "find_accounts",
        "lookup_accounts",
        "lookup_account_names",
        "get_account_reputations",
        "get_content",
        "get_content_replies",
        "get_active_votes",
        "get_profile",
        "get_profiles",
        "get_follow_count",
        "get_followers",
        "get_following",
        "get_blog",
        "get_blog_entries",
        "get_discussion",
        "get_post",
        "get_post_header",
        "get_account_posts",
        "get_ranked_posts",
        "get_community",
        "list_communities",
        "get_trending_topics",
        "get_trending_tags",
        "get_witness_by_account",
        "get_witnesses_by_vote",
        "find_rc_accounts",
        "get_state",
        "get_post_discussions_by_payout",
        "get_comment_discussions_by_payout",
        "get_replies_by_last_update",
        "get_feed",
        "get_feed_entries",
        "get_reblogged_by",
    }
)
_EVM_FOREVER = frozenset({"eth_chainId", "net_version"})
_EVM_BY_HASH = frozenset(
    {
        "eth_getBlockByHash",
        "eth_getTransactionByHash",
        "eth_getTransactionReceipt",
        "eth_getBlockTransactionCountByHash",
        "eth_getTransactionByBlockHashAndIndex",
    }
)
_EVM_BY_NUMBER = {
    # method -> the position of its block parameter
    "eth_getBlockByNumber": 0,
    "eth_getBlockTransactionCountByNumber": 0,
    "eth_getTransactionByBlockNumberAndIndex": 0,
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_call": 1,
    "eth_getStorageAt": 2,
}
_EVM_SECOND = frozenset({"eth_blockNumber", "eth_gasPrice"})

BY_NUMBER_FINAL = -3.0
"""An EVM TTL: forever once the block asked for is final (never for a tag or a block to
come); see :func:`evm_block_of`."""
BY_HASH = -4.0
"""An EVM TTL: forever once found (a by-hash lookup's answer never changes, but ``null`` is
no answer)."""


def default_ttl(chain: str, parts: tuple[str, ...], broadcast: bool) -> float:
    """The chain preset's TTL for a method (``parts`` as routes read it)."""
    if broadcast:
        return NO_CACHE
    method = parts[-1]
    if chain == "evm":
        if method in _EVM_FOREVER:
            return FOREVER
        if method in _EVM_BY_HASH:
            return BY_HASH
        if method in _EVM_BY_NUMBER or method == "eth_getLogs":
            return BY_NUMBER_FINAL
        if method in _EVM_SECOND:
            return 1.0
        return NO_CACHE
    api = parts[-2] if len(parts) >= 2 else ""
    if api in ("network_broadcast_api", "login_api", "chain_api"):
        return NO_CACHE
    if method in _STEEM_FOREVER_ONCE_IRREVERSIBLE:
        return IF_IRREVERSIBLE
    if method in _STEEM_SECOND:
        return 1.0
    if method in _STEEM_MINUTE:
        return 60.0
    if method in _STEEM_FEW_SECONDS or method.startswith("get_discussions_by_"):
        return 3.0
    return NO_CACHE


def block_of(parts: tuple[str, ...], params: Any) -> int | None:
    """The (last) block a Steem-like block-bound call is about, from its parameters."""
    method = parts[-1]
    first: Any = None
    if isinstance(params, list) and params:
        first = params[0]
    elif isinstance(params, dict):
        first = params.get("block_num", params.get("starting_block_num"))
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        return None
    if method == "get_block_range":
        count = params[1] if isinstance(params, list) and len(params) > 1 else None
        if isinstance(params, dict):
            count = params.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return None
        return first + count - 1
    return first


_BLOCK_ID = re.compile(r"^[0-9a-fA-F]{8}")


def block_in_answer(result: Any) -> int | None:
    """The number of the block an answer holds, read from its id as jussi and drone do
    (the first 8 hex digits of ``block_id``, or of ``previous`` plus one)."""
    if not isinstance(result, dict):
        return None
    block = result.get("block") if isinstance(result.get("block"), dict) else None
    header = result.get("header") if isinstance(result.get("header"), dict) else None
    for source, key, plus in (
        (block, "block_id", 0),
        (header, "previous", 1),
        (result, "block_id", 0),
        (result, "previous", 1),
    ):
        if source is not None and isinstance(source.get(key), str):
            match = _BLOCK_ID.match(source[key])
            if match is not None:
                return int(match.group(0), 16) + plus
    return None


def block_link(result: Any) -> tuple[str, str] | None:
    """A block answer's own id and the id of the block before it, when it carries both
    (``condenser_api.get_block``'s ``block_id`` and ``previous``, or ``block_api.get_block``'s
    ``block``; an EVM block's ``hash`` and ``parentHash``)."""
    if not isinstance(result, dict):
        return None
    inner = result.get("block")
    block: dict[str, Any] = inner if isinstance(inner, dict) else result
    own, previous = block.get("block_id"), block.get("previous")
    if own is None and previous is None:
        own, previous = block.get("hash"), block.get("parentHash")
    if isinstance(own, str) and isinstance(previous, str):
        return own, previous
    return None


def block_transactions(result: Any) -> frozenset[str] | None:
    """The ids of the transactions a block answer holds (Steem's ``transaction_ids``; EVM's
    ``transactions``, hashes or objects), or None when it does not list them."""
    if not isinstance(result, dict):
        return None
    inner = result.get("block")
    block: dict[str, Any] = inner if isinstance(inner, dict) else result
    listed = block.get("transaction_ids", block.get("transactions"))
    if not isinstance(listed, list):
        return None
    ids = set()
    for tx in listed:
        if isinstance(tx, dict):
            tx = tx.get("hash", tx.get("transaction_id"))
        if isinstance(tx, str):
            ids.add(tx)
    return frozenset(ids)


def empty(result: Any) -> bool:
    """An answer that says nothing: ``null``, ``[]``, ``{}``, ``""``, ``"0x"``, or an empty
    list of blocks, ops or entries."""
    if result is None or result in ("", "0x") or result == [] or result == {}:
        return True
    if isinstance(result, dict) and len(result) <= 3:
        for key in ("blocks", "ops", "ops_in_block", "history", "entries"):
            if key in result and result[key] in ([], None):
                return True
    return False


def evm_block_of(method: str, params: Any) -> int | str | None:
    """The block an EVM by-number call is about: its number, a tag (``latest``...), or
    None when it names none (``eth_getLogs`` without a range, say)."""
    if method == "eth_getLogs":
        spec = params[0] if isinstance(params, list) and params else None
        if not isinstance(spec, dict) or "blockHash" in spec:
            return None
        ends = [spec.get("fromBlock", "latest"), spec.get("toBlock", "latest")]
        numbers = [quantity(e) for e in ends]
        if any(n is None for n in numbers):
            return "latest"
        return max(n for n in numbers if n is not None)
    position = _EVM_BY_NUMBER.get(method)
    if position is None or not isinstance(params, list) or len(params) <= position:
        return "latest"  # a missing block parameter means the latest block
    value = params[position]
    number = quantity(value)
    return number if number is not None else str(value)


def quantity(value: Any) -> int | None:
    """An EVM quantity (``"0x1b4"``, or a plain number) as a number, or None."""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@dataclass
class Finality:
    """What a group knows of its chain: the highest head block seen and the last
    irreversible (final) block, neither of which ever moves backwards (a lagging node
    cannot take them back)."""

    head: int = 0
    irreversible: int = 0

    def saw(self, head: int | None, irreversible: int | None) -> bool:
        """News from a probe or an answer passing through; True when the head moved on."""
        moved = False
        if head is not None and head > self.head:
            self.head = head
            moved = True
        if irreversible is not None and irreversible > self.irreversible:
            self.irreversible = irreversible
        return moved
