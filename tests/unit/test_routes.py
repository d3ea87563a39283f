"""Routes and cache decisions, sans-IO: names as jussi and drone read them, longest prefixes,
params matching, TTLs, blocks and finality."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest

from rpcbalancer.cache import AnswerCache, Finality
from rpcbalancer.cache.memory import OVERHEAD, Entry, MemoryTier
from rpcbalancer.cache.policy import block_in_answer, block_of, default_ttl, empty, evm_block_of
from rpcbalancer.config.model import CacheConfig
from rpcbalancer.config.ttl import FOREVER, IF_IRREVERSIBLE, NO_CACHE, parse_ttl
from rpcbalancer.proxy.routes import (
    Renamer,
    RouteRule,
    RouteTable,
    canonical,
    name_of,
    preset_rules,
    translated,
)


@pytest.mark.parametrize(
    ("method", "params", "dotted", "sent_params"),
    [
        ("condenser_api.get_block", [1], "appbase.condenser_api.get_block", [1]),
        ("get_block", [1], "steemd.database_api.get_block", [1]),
        ("call", ["database_api", "get_block", [1]], "steemd.database_api.get_block", [1]),
        ("call", ["condenser_api", "get_block", [1]], "appbase.condenser_api.get_block", [1]),
        ("call", ["block_api", "get_block", {"block_num": 1}], "appbase.block_api.get_block",
         {"block_num": 1}),
        ("call", [0, "get_accounts", [["a"]]], "steemd.database_api.get_accounts", [["a"]]),
        ("call", [1, "get_version", []], "steemd.login_api.get_version", []),
        ("bridge.get_post", {"author": "a"}, "bridge.get_post", {"author": "a"}),
        ("jsonrpc.get_methods", {}, "appbase.jsonrpc.get_methods", {}),
        ("hive.db_head_state", {}, "hive.db_head_state", {}),
    ],
)  # fmt: skip
def test_methods_are_named_as_jussi_and_drone_name_them(
    method: str, params: object, dotted: str, sent_params: object
) -> None:
    name = name_of(method, params, "steemd")
    assert name.dotted == dotted
    assert name.params == sent_params


def test_evm_methods_stand_alone() -> None:
    assert name_of("eth_call", [], None).parts == ("eth_call",)


def test_the_longest_prefix_decides_each_setting_on_its_own() -> None:
    table = RouteTable(
        [
            RouteRule("appbase", group="hived", ttl=1.0, timeout=3.0),
            RouteRule("appbase.condenser_api.get_content", group="hivemind", ttl=6.0),
            RouteRule("appbase.condenser_api.get_block", ttl=IF_IRREVERSIBLE),
            RouteRule("bridge", group="hivemind", ttl=NO_CACHE, timeout=30.0),
            RouteRule("bridge.get_post", ttl=6.0),
        ],
        "hived",
    )
    content = table.resolve(name_of("condenser_api.get_content", ["a", "p"], "hived"))
    assert (content.group, content.ttl, content.timeout) == ("hivemind", 6.0, 3.0)
    block = table.resolve(name_of("condenser_api.get_block", [1], "hived"))
    assert (block.group, block.ttl) == ("hived", IF_IRREVERSIBLE)
    post = table.resolve(name_of("bridge.get_post", {}, "hived"))
    assert (post.group, post.ttl, post.timeout) == ("hivemind", 6.0, 30.0)
    other = table.resolve(name_of("bridge.get_ranked_posts", {}, "hived"))
    assert other.ttl == NO_CACHE
    # Whole parts only: a prefix that cuts a part in two matches nothing.
    cut = RouteTable([RouteRule("appbase.condenser_api.get_bl", group="x")], "d")
    assert cut.resolve(name_of("condenser_api.get_block", [1], "hived")).group == "d"


def test_params_prefixes_match_the_data_not_its_spelling() -> None:
    table = RouteTable(
        [
            RouteRule("steemd.database_api.get_state", ttl=1.0),
            RouteRule("steemd.database_api.get_state.params=['/trending']", ttl=30.0),
            RouteRule('appbase.block_api.get_block.params={"block_num":23}', ttl=FOREVER),
        ],
        "default",
    )
    assert table.resolve(name_of("get_state", ["/trending"], "steemd")).ttl == 30.0
    assert table.resolve(name_of("get_state", ["/hot"], "steemd")).ttl == 1.0
    named = name_of("block_api.get_block", {"block_num": 23}, "steemd")
    assert table.resolve(named).ttl == FOREVER


def test_canonical_params_sort_keys_at_every_depth_and_keep_big_integers() -> None:
    assert canonical({"b": {"y": 1, "x": [2, {"q": 1, "p": 2}]}, "a": 1}) == (
        '{"a":1,"b":{"x":[2,{"p":2,"q":1}],"y":1}}'
    )
    assert canonical([2**70]) == f"[{2**70}]"
    assert canonical(None) == "[]"


def test_translation_and_equivalent_methods_give_one_spelling() -> None:
    legacy = name_of("get_block", [5], "hived")
    condenser = translated(legacy, "hived")
    assert condenser.dotted == "appbase.condenser_api.get_block"
    assert condenser.method == "condenser_api.get_block" and condenser.params == [5]
    renamer = Renamer(
        {
            "block_api.get_block": ["appbase.condenser_api.get_block"],
            "a.b": ["a.c"],
            "a.c": ["a.b"],
        },
        "hived",
    )
    renamed = renamer.rename(name_of("condenser_api.get_block", [5], "hived"))
    assert renamed.dotted == "appbase.block_api.get_block" and renamed.params == [5]
    assert renamer.rename(name_of("a.b", [], "hived")).dotted in ("a.b", "a.c")  # no loop


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(3, 3.0), (0, FOREVER), (-1, NO_CACHE), (-2, IF_IRREVERSIBLE), ("NO_CACHE", NO_CACHE),
     ("NO_EXPIRE", FOREVER), ("EXPIRE_IF_REVERSIBLE", IF_IRREVERSIBLE), ("6", 6.0)],
)  # fmt: skip
def test_ttls_in_jussi_and_drone_spellings(given: object, seconds: float) -> None:
    assert parse_ttl(given) == seconds


def test_bad_ttls_are_refused() -> None:
    for bad in ("soon", -3, True):
        with pytest.raises(ValueError, match="TTL"):
            parse_ttl(bad)


def test_preset_ttls() -> None:
    steem = lambda m: default_ttl("steem", name_of(m, [], "steemd").parts, False)  # noqa: E731
    assert steem("condenser_api.get_block") == IF_IRREVERSIBLE
    assert steem("condenser_api.get_dynamic_global_properties") == 1.0
    assert steem("condenser_api.get_config") == 60.0
    assert steem("condenser_api.get_accounts") == 3.0
    assert steem("condenser_api.get_discussions_by_trending") == 3.0
    assert steem("condenser_api.get_post_discussions_by_payout") == 3.0
    assert steem("condenser_api.get_account_history") == NO_CACHE
    assert steem("network_broadcast_api.broadcast_transaction") == NO_CACHE
    assert default_ttl("steem", ("appbase", "condenser_api", "get_block"), True) == NO_CACHE
    assert default_ttl("evm", ("eth_chainId",), False) == FOREVER
    assert default_ttl("evm", ("eth_sendRawTransaction",), True) == NO_CACHE


def test_blocks_from_requests_and_answers() -> None:
    assert block_of(("appbase", "condenser_api", "get_block"), [42]) == 42
    assert block_of(("appbase", "block_api", "get_block"), {"block_num": 42}) == 42
    assert block_of(("appbase", "block_api", "get_block_range"), [40, 3]) == 42
    assert block_of(("appbase", "condenser_api", "get_block"), ["x"]) is None
    assert block_in_answer({"block_id": "0000002a" + "0" * 32}) == 42
    assert block_in_answer({"block": {"block_id": "0000002a" + "0" * 32}}) == 42
    assert block_in_answer({"header": {"previous": "00000029" + "0" * 32}}) == 42
    assert evm_block_of("eth_getBlockByNumber", ["0x2a", False]) == 42
    assert evm_block_of("eth_getBlockByNumber", ["latest", False]) == "latest"
    assert evm_block_of("eth_getBalance", ["0xabc"]) == "latest"
    assert evm_block_of("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x2a"}]) == 42
    assert evm_block_of("eth_getLogs", [{"fromBlock": "0x1"}]) == "latest"
    for nothing in (None, [], {}, "", "0x", {"blocks": []}, {"ops": []}):
        assert empty(nothing)
    assert not empty({"block_id": "x"}) and not empty([1]) and not empty(0)


class Call(NamedTuple):
    """A call as the cache reads it (a plan's key, method parts, params and TTL)."""

    key: str
    parts: tuple[str, ...]
    params: Any
    ttl: float


def test_what_an_answer_must_be_to_be_kept() -> None:
    cache = AnswerCache(CacheConfig(enabled=True, max_item_bytes=200), "steem", 3.0)
    final = Finality(head=100, irreversible=85)
    block = ("appbase", "condenser_api", "get_block")
    answer = {"block_id": "0000004b" + "0" * 32}  # block 75
    kept = cache.keep(Call("k", block, [75], IF_IRREVERSIBLE), answer, "n1", 85, final)
    assert kept is not None and kept.expires == math.inf and kept.head is None
    # Served by a node that does not hold it irreversible yet: until the chain moves on.
    young = cache.keep(Call("k", block, [75], IF_IRREVERSIBLE), answer, "n1", 70, final)
    assert young is not None and young.head == 100 and math.isfinite(young.expires)
    # Another block than the one asked for, an empty answer, too large: never.
    assert cache.keep(Call("k", block, [76], IF_IRREVERSIBLE), answer, "n1", 85, final) is None
    assert cache.keep(Call("k", block, [75], IF_IRREVERSIBLE), None, "n1", 85, final) is None
    assert cache.keep(Call("k", block, [75], 3.0), ["x" * 300], "n1", 85, final) is None
    assert cache.keep(Call("k", block, [75], NO_CACHE), answer, "n1", 85, final) is None


def test_a_young_block_is_not_served_once_the_chain_moved_on() -> None:
    cache = AnswerCache(CacheConfig(enabled=True), "steem", 3.0)
    final = Finality(head=100, irreversible=85)
    entry = Entry(b"{}", "n1", math.inf, head=100)
    cache.put("k", entry)
    assert cache.get("k", final) is entry
    final.saw(101, 86)
    assert cache.get("k", final) is None


def test_finality_never_moves_back() -> None:
    final = Finality()
    assert final.saw(100, 85)
    assert not final.saw(90, 70)  # a lagging node
    assert (final.head, final.irreversible) == (100, 85)


def test_memory_is_bounded_in_bytes_least_recently_used_out_first() -> None:
    memory = MemoryTier(max_bytes=2000)
    for i in range(50):
        memory.put(f"k{i}", Entry(b"x" * 100, "n", math.inf))
        memory.get("k0", 0.0)  # k0 stays in use
    assert memory.bytes <= 2000
    assert memory.get("k0", 0.0) is not None and memory.get("k1", 0.0) is None
    assert memory.evictions > 0 and len(memory) * (100 + OVERHEAD + 3) >= memory.bytes


def test_what_the_cache_holds_is_what_it_counts() -> None:
    """``max_bytes`` bounds the memory the cache really holds (keys, entries, the answers'
    own buffers: orjson's output keeps a 4 KiB buffer unless copied), not only the text."""
    import gc
    import tracemalloc

    config = CacheConfig(enabled=True, max_bytes=1 << 20)
    cache = AnswerCache(config, "steem", 3.0)
    parts = ("appbase", "condenser_api", "get_accounts")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            name = f"user{i}"
            result = [{"name": name, "balance": "1.000 STEEM", "id": i}]
            key = f'default\x1f{".".join(parts)}\x1f[["{name}"]]'
            entry = cache.keep(Call(key, parts, [[name]], 3.0), result, "node", None, Finality())
            assert entry is not None
            cache.put(key, entry)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.memory.evictions > 0 and cache.memory.bytes <= config.max_bytes
    assert held <= 1.2 * config.max_bytes, held


@pytest.mark.parametrize(
    ("method", "params", "group"),
    [
        ("bridge.get_ranked_posts", {"sort": "trending"}, "hivemind"),
        ("hive.db_head_state", {}, "hivemind"),
        ("condenser_api.get_followers", ["a", None, "blog", 10], "hivemind"),
        ("call", ["follow_api", "get_followers", ["a", None, "blog", 10]], "hivemind"),
        ("get_discussions_by_trending", [{"limit": 1}], "hivemind"),
        ("condenser_api.get_account_history", ["a", -1, 10], "hafah"),
        ("account_history_api.get_ops_in_block", {"block_num": 5}, "hafah"),
        ("call", ["database_api", "get_ops_in_block", [5, False]], "hafah"),
        ("condenser_api.get_block", [5], "hived"),
        ("database_api.find_accounts", {"accounts": ["a"]}, "hived"),
        ("condenser_api.get_content", ["a", "p"], "special"),  # configured: replaces it
    ],
)  # fmt: skip
def test_the_chain_presets_routes_send_social_calls_and_history_to_their_groups(
    method: str, params: object, group: str
) -> None:
    rules = preset_rules("hived", ["hived", "hivemind", "hafah", "special"])
    rules.append(RouteRule("appbase.condenser_api.get_content", "special"))
    table = RouteTable(rules, "hived")
    assert table.resolve(name_of(method, params, "hived")).group == group


def test_the_chain_presets_route_nothing_without_those_groups_or_namespaces() -> None:
    assert preset_rules("hived", ["default", "social"]) == []
    assert preset_rules(None, ["default", "hivemind", "hafah"]) == []  # EVM
    history = preset_rules("steemd", ["default", "account_history"])
    assert {r.group for r in history} == {"account_history"}
