"""What a Steem or Hive API node answers, as far as real client libraries look.

dsteem, dhive, steem-js, lighthive and hive-nectar each read a few calls at connect time and
before they sign (config, version, chain properties, the dynamic global properties, a block
header for TaPoS, the signer's account with its keys) and then the calls an app makes (blocks,
accounts, posts). This module answers all of them in the two shapes a node speaks:

- the legacy shape (``condenser_api.*``, bare methods, and ``database_api`` called with a
  list through ``call``): positional params, amounts as strings (``"1.000 STEEM"``);
- the appbase shape (``database_api.*``, ``block_api.*``, ``rc_api.*`` with named params):
  results wrapped in an object (``{"accounts": [...]}``) and amounts as NAI triples.

Everything is a pure function of the chain, the head block and the call, so every fake node
of a run agrees (a forked node differs only in the ids of its forked blocks). Accounts all use
one throwaway key, :data:`TEST_PUBLIC_KEY`, so a client can sign as any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

MISSING: Final = object()
"""The call is not one this API answers (the node then says: method not found)."""

UNKNOWN_TRANSACTION: Final = object()
"""steemd's answer for a transaction it has not seen: an assertion error, not ``null``."""

NO_HEADER: Final = object()
"""An EVM node's answer for state at a block it does not have yet (geth: an error)."""

TEST_PUBLIC_KEY = "STM6aGPtxMUGnTPfKLSxdwCHbximSJxzrRjeQmwRW9BRCdrFotKLs"
"""Every simulated account's key (owner, active, posting, memo). Its private key is the
widely published example WIF ``5JRaypasxMx1L97ZUX7YuC5Psb5EAbF821kkAGtBj7xCJFQcbLg``: a key for
tests, never for a real chain."""

IRREVERSIBLE_DEPTH = 15
"""How many blocks behind the head the last irreversible block is."""

_CHAIN_IDS = {
    "steem": "0" * 64,
    "hive": "beeab0de" + "0" * 56,
    "blurt": "cd8d90f29ae273abec3eaa7731e25934c63eb654d55080caff2ebb7f5df6381f",
}
_VERSIONS = {"steem": "0.23.1", "hive": "1.27.5", "blurt": "0.8.2"}
_SYMBOLS = {"steem": ("STEEM", "SBD"), "hive": ("HIVE", "HBD"), "blurt": ("BLURT", "BBD")}
_NAI = {"main": ("@@000000021", 3), "dollar": ("@@000000013", 3), "vests": ("@@000000037", 6)}
_EPOCH_ISO = "1970-01-01T00:00:00"
_NEVER_ISO = "1969-12-31T23:59:59"


def block_id(number: int, forked: bool = False) -> str:
    """A block's id: its number in the first 4 bytes (as on the real chains), then a filler
    that tells a forked block (``f``) from the canonical one (``0``)."""
    return f"{number:08x}" + ("f" if forked else "0") * 32


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class SteemApi:
    """The answers of one chain's API nodes (``steem``, ``hive`` or ``blurt``)."""

    def __init__(self, chain: str, block_time: Callable[[int], float]) -> None:
        self.chain = chain if chain in _CHAIN_IDS else "steem"
        self.block_time = block_time
        self.main, self.dollar = _SYMBOLS[self.chain]
        self.version = _VERSIONS[self.chain]
        self._dgp: dict[tuple[int, bool, bool], dict[str, Any]] = {}

    # -- the shapes ------------------------------------------------------------------------

    def amount(self, value: float, kind: str, nai: bool) -> Any:
        ident, precision = _NAI[kind]
        if nai:
            return {
                "amount": str(round(value * 10**precision)),
                "precision": precision,
                "nai": ident,
            }
        symbol = {"main": self.main, "dollar": self.dollar, "vests": "VESTS"}[kind]
        return f"{value:.{precision}f} {symbol}"

    def answer(self, method: str, params: Any, head: int, fork: int = 0) -> Any:
        """The result of ``method`` (``api.name``, or a bare legacy name) at ``head``, or
        :data:`MISSING` / :data:`UNKNOWN_TRANSACTION`."""
        api, _, name = method.rpartition(".")
        legacy = api in ("", "condenser_api", "login_api") or (
            api == "database_api" and isinstance(params, list)
        )
        args: dict[str, Any] = params if isinstance(params, dict) else {}
        listed: list[Any] = params if isinstance(params, list) else []
        handler = _HANDLERS.get(name)
        if handler is None or (api == "bridge" and name != "get_post"):
            return MISSING
        return handler(self, _Call(api, name, legacy, args, listed, head, fork))

    # -- chain state -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        p = "HIVE" if self.chain == "hive" else self.chain.upper()
        return {
            "IS_TEST_NET": False,
            f"{p}_CHAIN_ID": _CHAIN_IDS[self.chain],
            f"{p}_ADDRESS_PREFIX": "STM",
            f"{p}_BLOCKCHAIN_VERSION": self.version,
            f"{p}_BLOCK_INTERVAL": 3,
            f"{p}_BLOCKS_PER_DAY": 28800,
            f"{p}_100_PERCENT": 10000,
            f"{p}_1_PERCENT": 100,
            f"{p}_CASHOUT_WINDOW_SECONDS": 604800,
            f"{p}_VOTE_REGENERATION_SECONDS": 432000,
            f"{p}_VOTE_DUST_THRESHOLD": 50000000,
            f"{p}_MAX_VOTE_CHANGES": 5,
            f"{p}_UPVOTE_LOCKOUT_SECONDS": 43200,
            f"{p}_REVERSE_AUCTION_WINDOW_SECONDS": 300,
            f"{p}_MIN_ROOT_COMMENT_INTERVAL": 300,
            f"{p}_MAX_MEMO_SIZE": 2048,
            f"{p}_SYMBOL": self.main,
            f"{self.dollar}_SYMBOL": self.dollar,
            "VESTS_SYMBOL": "VESTS",
        }

    def versions(self) -> dict[str, Any]:
        revision = "hive_revision" if self.chain == "hive" else "steem_revision"
        doc = {"blockchain_version": self.version, revision: "f" * 40, "fc_revision": "f" * 40}
        if self.chain == "hive":
            doc.update(chain_id=_CHAIN_IDS["hive"], node_type="mainnet")
        return doc

    def dynamic_global_properties(self, head: int, fork: int, nai: bool) -> dict[str, Any]:
        key = (head, bool(fork), nai)
        cached = self._dgp.get(key)
        if cached is not None:
            return cached
        if len(self._dgp) > 64:
            self._dgp.clear()
        a = self.amount
        m, d = self.main.lower(), self.dollar.lower()
        doc = {
            "id": 0,
            "head_block_number": head,
            "head_block_id": block_id(head, fork > 0),
            "time": iso(self.block_time(head)),
            "current_witness": witness_of(head),
            "total_pow": 514415,
            "num_pow_witnesses": 172,
            "virtual_supply": a(400_000_000.0, "main", nai),
            "current_supply": a(390_000_000.0, "main", nai),
            "confidential_supply": a(0, "main", nai),
            f"init_{d}_supply": a(0, "dollar", nai),
            f"current_{d}_supply": a(10_000_000.0, "dollar", nai),
            f"confidential_{d}_supply": a(0, "dollar", nai),
            f"total_vesting_fund_{m}": a(200_000_000.0, "main", nai),
            "total_vesting_shares": a(400_000_000_000.0, "vests", nai),
            f"total_reward_fund_{m}": a(0, "main", nai),
            "total_reward_shares2": "0",
            "pending_rewarded_vesting_shares": a(1_000_000.0, "vests", nai),
            f"pending_rewarded_vesting_{m}": a(500.0, "main", nai),
            f"{d}_interest_rate": 0,
            f"{d}_print_rate": 10000,
            "maximum_block_size": 65536,
            "current_aslot": head + 100,
            "recent_slots_filled": "340282366920938463463374607431768211455",
            "participation_count": 128,
            "last_irreversible_block_num": head - IRREVERSIBLE_DEPTH,
            "vote_power_reserve_rate": 10,
            "delegation_return_period": 432000,
            "reverse_auction_seconds": 300,
            "available_account_subsidies": 1_000_000,
            f"{d}_stop_percent": 1000,
            f"{d}_start_percent": 900,
            "next_maintenance_time": iso(self.block_time(head) + 3600),
            "last_budget_time": iso(self.block_time(head)),
            "content_reward_percent": 6500,
            "vesting_reward_percent": 1500,
            "sps_fund_percent": 1000,
            "downvote_pool_percent": 2500,
        }
        self._dgp[key] = doc
        return doc

    def chain_properties(self, nai: bool) -> dict[str, Any]:
        return {
            "account_creation_fee": self.amount(3.0, "main", nai),
            "maximum_block_size": 65536,
            f"{self.dollar.lower()}_interest_rate": 0,
            "account_subsidy_budget": 797,
            "account_subsidy_decay": 347321,
        }

    def price(self, nai: bool) -> dict[str, Any]:
        return {"base": self.amount(0.25, "dollar", nai), "quote": self.amount(1.0, "main", nai)}

    def block(self, number: int, head: int, fork: int) -> dict[str, Any]:
        """Block ``number`` as a node at ``head`` serves it: on a fork for its last ``fork``
        heights (other ids, chained to each other), otherwise the canonical block."""

        def forked(n: int) -> bool:
            return fork > 0 and n > head - fork

        return {
            "previous": block_id(number - 1, forked(number - 1)),
            "timestamp": iso(self.block_time(number)),
            "witness": witness_of(number),
            "transaction_merkle_root": "0" * 40,
            "extensions": [],
            "witness_signature": "1f" + "0" * 128,
            "transactions": [],
            "block_id": block_id(number, forked(number)),
            "signing_key": TEST_PUBLIC_KEY,
            "transaction_ids": [],
        }

    def account(self, name: str, head: int, nai: bool) -> dict[str, Any]:
        a = self.amount
        m, d = self.main.lower(), self.dollar.lower()
        created = iso(self.block_time(head) - 100 * 86400)
        now = int(self.block_time(head))
        authority = {
            "weight_threshold": 1,
            "account_auths": [],
            "key_auths": [[TEST_PUBLIC_KEY, 1]],
        }
        return {
            "id": _number_of(name),
            "name": name,
            "owner": authority,
            "active": authority,
            "posting": authority,
            "memo_key": TEST_PUBLIC_KEY,
            "json_metadata": "{}",
            "posting_json_metadata": "{}",
            "proxy": "",
            "last_owner_update": _EPOCH_ISO,
            "last_account_update": created,
            "created": created,
            "mined": False,
            "recovery_account": "steem" if self.chain != "hive" else "hive",
            "last_account_recovery": _EPOCH_ISO,
            "reset_account": "null",
            "comment_count": 0,
            "lifetime_vote_count": 0,
            "post_count": 10,
            "can_vote": True,
            "voting_manabar": {"current_mana": "1000000000", "last_update_time": now},
            "downvote_manabar": {"current_mana": "250000000", "last_update_time": now},
            "voting_power": 9800,
            "balance": a(100.0, "main", nai),
            "savings_balance": a(0, "main", nai),
            f"{d}_balance": a(5.0, "dollar", nai),
            f"{d}_seconds": "0",
            f"{d}_seconds_last_update": _EPOCH_ISO,
            f"{d}_last_interest_payment": _EPOCH_ISO,
            f"savings_{d}_balance": a(0, "dollar", nai),
            f"savings_{d}_seconds": "0",
            f"savings_{d}_seconds_last_update": _EPOCH_ISO,
            f"savings_{d}_last_interest_payment": _EPOCH_ISO,
            "savings_withdraw_requests": 0,
            f"reward_{d}_balance": a(0, "dollar", nai),
            f"reward_{m}_balance": a(0, "main", nai),
            "reward_vesting_balance": a(0, "vests", nai),
            f"reward_vesting_{m}": a(0, "main", nai),
            "vesting_shares": a(1_000_000.0, "vests", nai),
            "delegated_vesting_shares": a(0, "vests", nai),
            "received_vesting_shares": a(0, "vests", nai),
            "vesting_withdraw_rate": a(0, "vests", nai),
            "post_voting_power": a(1_000_000.0, "vests", nai),
            "next_vesting_withdrawal": _NEVER_ISO,
            "withdrawn": 0,
            "to_withdraw": 0,
            "withdraw_routes": 0,
            "pending_transfers": 0,
            "curation_rewards": 0,
            "posting_rewards": 0,
            "proxied_vsf_votes": [0, 0, 0, 0],
            "witnesses_voted_for": 0,
            "last_post": created,
            "last_root_post": created,
            "last_vote_time": created,
            "post_bandwidth": 0,
            "pending_claimed_accounts": 0,
            "vesting_balance": a(0, "main", nai),
            "reputation": 0,
            "witness_votes": [],
        }

    def post(self, author: str, permlink: str, head: int, bridge: bool = False) -> dict[str, Any]:
        """A post; ``bridge``: in hivemind's ``bridge.get_post`` shape."""
        created = iso(self.block_time(head) - 3600)
        payout = iso(self.block_time(head) + 6 * 86400)
        zero = self.amount(0, "dollar", False)
        doc: dict[str, Any] = {
            "author": author,
            "permlink": permlink,
            "category": "test",
            "title": f"A post by {author}",
            "body": "Lorem ipsum " * 8,
            "json_metadata": "{}" if not bridge else {},
            "created": created,
            "updated": created,
            "depth": 0,
            "children": 0,
            "net_rshares": 0,
            "net_votes": len(permlink),
            "is_paidout": False,
            "payout_at": payout,
            "pending_payout_value": zero,
            "author_reputation": 25.0 if bridge else 0,
            "active_votes": [],
            "beneficiaries": [],
            "max_accepted_payout": self.amount(1_000_000, "dollar", False),
            "percent_hbd" if self.chain == "hive" else "percent_steem_dollars": 10000,
            "url": f"/test/@{author}/{permlink}",
            "replies": [],
        }
        if bridge:
            doc.update(
                post_id=_number_of(author + "/" + permlink),
                stats={"hide": False, "gray": False, "total_votes": 0, "flag_weight": 0},
                payout=0.0,
                author_payout_value=zero,
                curator_payout_value=zero,
                promoted=zero,
                blacklists=[],
                community_title="",
                author_role="guest",
                author_title="",
            )
        else:
            doc.update(
                id=_number_of(author + "/" + permlink),
                parent_author="",
                parent_permlink="test",
                last_update=created,
                active=created,
                last_payout=_EPOCH_ISO,
                cashout_time=payout,
                max_cashout_time=_NEVER_ISO,
                total_payout_value=zero,
                curator_payout_value=zero,
                author_rewards=0,
                root_author=author,
                root_permlink=permlink,
                allow_replies=True,
                allow_votes=True,
                allow_curation_rewards=True,
                root_title=f"A post by {author}",
                total_pending_payout_value=self.amount(0, "main", False),
                promoted=zero,
                body_length=96,
                reblogged_by=[],
            )
        return doc


class _Call:
    """One call as the handlers see it."""

    __slots__ = ("api", "args", "fork", "head", "legacy", "listed", "name")

    def __init__(
        self,
        api: str,
        name: str,
        legacy: bool,
        args: dict[str, Any],
        listed: list[Any],
        head: int,
        fork: int,
    ) -> None:
        self.api, self.name, self.legacy = api, name, legacy
        self.args, self.listed, self.head, self.fork = args, listed, head, fork

    def arg(self, index: int, key: str, default: Any = None) -> Any:
        """A param given by position (legacy) or by name (appbase)."""
        if self.listed:
            return self.listed[index] if len(self.listed) > index else default
        return self.args.get(key, default)


def witness_of(number: int) -> str:
    """Who produced a block: one of 21 witnesses, the same on every node."""
    return f"witness{number % 21:02d}"


def _number_of(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def _names(value: Any) -> list[str]:
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []


# -- the handlers, one per method name ---------------------------------------------------------


def _get_block(api: SteemApi, call: _Call) -> Any:
    number = call.arg(0, "block_num")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number <= call.head:
        return None if call.legacy else {}
    block = api.block(number, call.head, call.fork)
    if call.name == "get_block_header":
        header = {k: block[k] for k in ("previous", "timestamp", "witness", "extensions")}
        header["transaction_merkle_root"] = block["transaction_merkle_root"]
        return header if call.legacy else {"header": header}
    return block if call.legacy else {"block": block}


def _get_block_range(api: SteemApi, call: _Call) -> Any:
    start, count = call.args.get("starting_block_num"), call.args.get("count")
    if not isinstance(start, int) or not isinstance(count, int) or start < 1:
        return {"blocks": []}
    last = min(start + min(count, 1000), call.head + 1)
    return {"blocks": [api.block(n, call.head, call.fork) for n in range(start, last)]}


def _accounts(api: SteemApi, call: _Call) -> Any:
    if call.legacy:
        return [api.account(n, call.head, False) for n in _names(call.arg(0, "accounts"))]
    names = _names(call.args.get("accounts") or call.args.get("account_names"))
    return {"accounts": [api.account(n, call.head, True) for n in names]}


def _content(api: SteemApi, call: _Call) -> Any:
    author, permlink = call.arg(0, "author"), call.arg(1, "permlink")
    if not isinstance(author, str) or not isinstance(permlink, str):
        return None
    return api.post(author, permlink, call.head, bridge=call.api == "bridge")


def _rc_accounts(api: SteemApi, call: _Call) -> Any:
    names = _names(call.args.get("accounts") or call.arg(0, "accounts"))
    now = int(api.block_time(call.head))
    return {
        "rc_accounts": [
            {
                "account": n,
                "rc_manabar": {"current_mana": "1000000000", "last_update_time": now},
                "max_rc_creation_adjustment": api.amount(0, "vests", True),
                "max_rc": "1000000000",
            }
            for n in names
        ]
    }


def _feed(api: SteemApi, call: _Call) -> Any:
    price = api.price(not call.legacy)
    if call.name in ("get_current_median_history_price", "get_current_price_feed"):
        return price
    return {
        "id": 0,
        "current_median_history": price,
        "market_median_history": price,
        "current_min_history": price,
        "current_max_history": price,
        "price_history": [price],
    }


def _reward_fund(api: SteemApi, call: _Call) -> Any:
    fund = {
        "id": 0,
        "name": "post",
        "reward_balance": api.amount(800_000.0, "main", not call.legacy),
        "recent_claims": "500000000000000000",
        "last_update": iso(api.block_time(call.head)),
        "content_constant": "2000000000000",
        "percent_curation_rewards": 5000,
        "percent_content_rewards": 10000,
        "author_reward_curve": "linear",
        "curation_reward_curve": "linear",
    }
    return fund if call.name == "get_reward_fund" else {"funds": [fund]}


def _witness_schedule(api: SteemApi, call: _Call) -> Any:
    return {
        "id": 0,
        "current_virtual_time": "0",
        "next_shuffle_block_num": call.head + 21,
        "current_shuffled_witnesses": [witness_of(n) for n in range(21)],
        "num_scheduled_witnesses": 21,
        "median_props": api.chain_properties(not call.legacy),
        "majority_version": api.version,
        "max_voted_witnesses": 20,
        "max_runner_witnesses": 1,
        "hardfork_required_witnesses": 17,
    }


_HANDLERS: dict[str, Callable[[SteemApi, _Call], Any]] = {
    "get_config": lambda api, call: api.config(),
    "get_version": lambda api, call: api.versions(),
    "get_hardfork_version": lambda api, call: api.version.rsplit(".", 1)[0] + ".0",
    "get_dynamic_global_properties": lambda api, call: api.dynamic_global_properties(
        call.head, call.fork, not call.legacy
    ),
    "get_chain_properties": lambda api, call: api.chain_properties(not call.legacy),
    "get_witness_schedule": _witness_schedule,
    "get_feed_history": _feed,
    "get_current_median_history_price": _feed,
    "get_current_price_feed": _feed,
    "get_reward_fund": _reward_fund,
    "get_reward_funds": _reward_fund,
    "get_block": _get_block,
    "get_block_header": _get_block,
    "get_block_range": _get_block_range,
    "get_ops_in_block": lambda api, call: [] if call.legacy else {"ops": []},
    "get_accounts": _accounts,
    "find_accounts": _accounts,
    "lookup_account_names": _accounts,
    "get_content": _content,
    "get_post": _content,
    "get_active_votes": lambda api, call: [] if call.legacy else {"votes": []},
    "find_rc_accounts": _rc_accounts,
    "get_transaction": lambda api, call: UNKNOWN_TRANSACTION,
    "get_transaction_hex": lambda api, call: "00",
    "get_potential_signatures": lambda api, call: [] if call.legacy else {"keys": []},
    "get_required_signatures": lambda api, call: [] if call.legacy else {"keys": []},
    "verify_authority": lambda api, call: True if call.legacy else {"valid": True},
}
