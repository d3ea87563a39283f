from __future__ import annotations

from typing import Any

import orjson
import pytest

from rpcbalancer.health.chains import CHAINS, Answer
from rpcbalancer.health.chains.evm import Evm
from rpcbalancer.health.probe import ping_ok
from rpcbalancer.keccak import keccak256
from rpcbalancer.proxy.router import judge
from rpcbalancer.upstream.pool import UpstreamResponse

STEEM = CHAINS["steem"]


def ok(doc: object) -> Answer:
    return Answer(status=200, body=orjson.dumps(doc), latency=0.01)


def rpc(result: object) -> Answer:
    return ok({"jsonrpc": "2.0", "id": 1, "result": result})


def steem_answers(**overrides: Answer) -> dict[str, Answer]:
    answers = {
        "status": ok({"status": "OK", "jussi_num": 500}),
        "head": rpc(
            {
                "head_block_number": 500,
                "time": "2026-01-01T00:00:00",
                "last_irreversible_block_num": 480,
            }
        ),
        "version": rpc({"blockchain_version": "0.23.1"}),
    }
    answers.update(overrides)
    return answers


def test_steem_reading_of_a_healthy_node() -> None:
    reading = STEEM.read(steem_answers())
    assert reading.ok
    assert reading.head_block == 500
    assert reading.irreversible_block == 480
    assert reading.version == "0.23.1"
    assert reading.version_doc == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"blockchain_version": "0.23.1"},
    }
    assert reading.head_time == 1767225600.0


def test_steem_status_other_than_ok_is_down() -> None:
    reading = STEEM.read(steem_answers(status=ok({"status": "SYNCING"})))
    assert not reading.ok
    assert "SYNCING" in (reading.error or "")


def test_steem_without_a_status_page_is_judged_by_its_rpc() -> None:
    reading = STEEM.read(steem_answers(status=Answer(status=404, body=b"not found")))
    assert reading.ok


def test_steem_head_errors_are_explained() -> None:
    error = ok({"jsonrpc": "2.0", "id": 1, "error": {"code": -32003, "message": "lock"}})
    assert STEEM.read(steem_answers(head=error)).error == "head: lock"
    refused = Answer(error="cannot connect (connection refused)")
    assert (
        STEEM.read(steem_answers(head=refused)).error == "head: cannot connect (connection refused)"
    )
    html = Answer(status=502, body=b"<html>")
    assert STEEM.read(steem_answers(head=html)).error == "head: HTTP 502"


def test_steem_broadcast_methods() -> None:
    for method in (
        "condenser_api.broadcast_transaction",
        "condenser_api.broadcast_transaction_synchronous",
        "network_broadcast_api.broadcast_transaction",
    ):
        assert STEEM.is_broadcast(method)
    assert not STEEM.is_broadcast("condenser_api.get_block")


def test_which_calls_may_see_a_clients_own_transaction() -> None:
    """After a broadcast, the client's calls that may read what it changed follow it; what
    no transaction changes is routed as anyone's. A call not known either way follows."""
    steem, evm = CHAINS["steem"], Evm()
    for name in ("get_accounts", "get_account_history", "get_transaction", "find_rc_accounts"):
        assert steem.sees_writes(name)
    for name in ("get_dynamic_global_properties", "get_block", "get_version", "get_config"):
        assert not steem.sees_writes(name)
    for name in ("eth_getBalance", "eth_getTransactionCount", "eth_getTransactionReceipt"):
        assert evm.sees_writes(name)
    for name in ("eth_call", "eth_getLogs", "eth_estimateGas", "some_new_method"):
        assert evm.sees_writes(name)
    for name in ("eth_blockNumber", "eth_chainId", "eth_getBlockByNumber", "eth_gasPrice"):
        assert not evm.sees_writes(name)


def test_a_synchronous_broadcast_shows_the_block_that_holds_it() -> None:
    steem = CHAINS["steem"]
    answer = b'{"jsonrpc":"2.0","result":{"id":"ab","block_num":1234,"trx_num":0,"expired":false},"id":1}'
    assert steem.named_block("broadcast_transaction_synchronous", answer) == 1234
    assert steem.named_block("broadcast_transaction", b'{"result":{},"id":1}') is None
    assert steem.named_block("get_transaction", answer) is None


def test_evm_reading() -> None:
    evm = CHAINS["evm"]
    reading = evm.read(
        {
            "head": rpc({"number": "0x10", "timestamp": "0x5"}),
            "version": rpc("Geth/v1.14"),
        }
    )
    assert reading.ok
    assert reading.head_block == 16
    assert reading.head_time == 5
    assert reading.version == "Geth/v1.14"
    assert reading.irreversible_block is None  # no finalized block: no finality known
    final = evm.read(
        {
            "head": rpc({"number": "0x10", "timestamp": "0x5"}),
            "final": rpc({"number": "0xc", "timestamp": "0x1"}),
        }
    )
    assert final.ok and final.irreversible_block == 12
    unknown = evm.read(
        {
            "head": rpc({"number": "0x10", "timestamp": "0x5"}),
            "final": ok({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad"}}),
        }
    )
    assert unknown.ok and unknown.irreversible_block is None
    assert evm.is_broadcast("eth_sendRawTransaction")
    assert not evm.is_broadcast("eth_call")
    assert evm.is_node_fault({"code": -32005, "message": "limit exceeded"})


def test_block_hashes_for_fork_choice() -> None:
    """The head's hash comes with the probe; another block's is asked of a node past it."""
    props = {"head_block_number": 500, "head_block_id": "000001f4ab", "time": "2026-01-01T00:00:00"}
    assert STEEM.read(steem_answers(head=rpc(props))).head_hash == "000001f4ab"
    call = STEEM.block_call(499)
    assert call is not None and orjson.loads(call.body or b"")["params"] == [500]
    assert b"get_block_header" in (call.body or b"")  # the next header: small, names it
    assert STEEM.block_hash(rpc({"previous": "000001f3cd", "witness": "w"})) == "000001f3cd"
    assert STEEM.block_hash(rpc(None)) is None  # a node without that block says nothing
    evm = CHAINS["evm"]
    head = {"number": "0x10", "timestamp": "0x5", "hash": "0xaa", "parentHash": "0xbb"}
    reading = evm.read({"head": rpc(head)})
    assert (reading.head_hash, reading.parent_hash) == ("0xaa", "0xbb")
    asked = evm.block_call(15)
    assert asked is not None and orjson.loads(asked.body or b"")["params"] == ["0xf", False]
    assert evm.block_hash(rpc({"number": "0xf", "hash": "0xbb"})) == "0xbb"
    assert evm.block_hash(ok({"jsonrpc": "2.0", "id": 1, "error": {"code": -1}})) is None


def response(status: int, body: bytes) -> UpstreamResponse:
    return UpstreamResponse(status, (), body)


def test_judge_tells_node_faults_from_client_faults() -> None:
    assert judge(response(200, b'{"result":1}'), STEEM) is None
    assert judge(response(503, b"<html>"), STEEM) == "answered HTTP 503"
    assert judge(response(429, b"{}"), STEEM) == "answered HTTP 429"
    assert judge(response(200, b"<html>oops"), STEEM) == "answered with a body that is not JSON"
    sick = b'{"error":{"code":-32003,"message":"Unable to acquire database lock"}}'
    assert "Unable to acquire" in (judge(response(200, sick), STEEM) or "")
    client = b'{"error":{"code":-32602,"message":"Invalid parameters"}}'
    assert judge(response(200, client), STEEM) is None
    assert judge(response(404, b"<html>"), STEEM) is None


def test_ping_verdicts() -> None:
    assert ping_ok(ok({"status": "OK", "jussi_num": 1}))
    assert not ping_ok(ok({"status": "NOPE"}))
    assert not ping_ok(ok({"error": {"code": 1}}))
    assert not ping_ok(Answer(status=503, body=b"{}"))
    assert not ping_ok(Answer(status=200, body=b"<html>"))
    assert not ping_ok(Answer(error="refused"))


def test_every_chain_preset_the_config_accepts_has_its_module() -> None:
    """The config layer names the presets (it imports nothing above it); ``health/chains``
    implements them: the two lists are one."""
    from rpcbalancer.config import CHAINS as NAMES

    assert set(NAMES) == set(CHAINS)


# -- EVM block tags resolved to numbers (proxy/heads.py) ------------------------------------------


def _resolve(tag: str) -> int | None:
    return {"latest": 100, "safe": 90, "finalized": 80}.get(tag)


@pytest.mark.parametrize(
    ("name", "params", "pinned"),
    [
        ("eth_getBalance", ["0xa", "latest"], (["0xa", "0x64"], 100)),
        ("eth_getBalance", ["0xa"], (["0xa", "0x64"], 100)),  # left out: latest
        ("eth_call", [{"to": "0xa"}, "finalized"], ([{"to": "0xa"}, "0x50"], 80)),
        ("eth_getStorageAt", ["0xa", "0x0", "safe"], (["0xa", "0x0", "0x5a"], 90)),
        ("eth_getBlockByNumber", ["latest", False], (["0x64", False], 100)),
        ("eth_feeHistory", ["0x4", "latest", [25]], (["0x4", "0x64", [25]], 100)),
        ("eth_getBalance", ["0xa", "pending"], None),  # pending goes as asked
        ("eth_getBalance", ["0xa", "0x10"], None),  # a number already
        ("eth_getBalance", ["0xa", {"blockHash": "0xb"}], None),  # EIP-1898: as asked
        ("eth_getBlockByNumber", [], None),  # not left out for a block read
        ("eth_chainId", [], None),
        ("eth_getBalance", {"address": "0xa"}, None),
    ],
)
def test_evm_tags_resolved_to_numbers(name: str, params: Any, pinned: Any) -> None:
    assert Evm().pinned(name, params, _resolve) == pinned


def test_evm_log_queries_get_their_tagged_bounds_resolved() -> None:
    evm = Evm()
    got = evm.pinned("eth_getLogs", [{"address": "0xa"}], _resolve)
    assert got == ([{"address": "0xa", "fromBlock": "0x64", "toBlock": "0x64"}], 100)
    got = evm.pinned("eth_getLogs", [{"fromBlock": "0x10", "toBlock": "finalized"}], _resolve)
    assert got == ([{"fromBlock": "0x10", "toBlock": "0x50"}], 80)
    # Backwards once resolved (a client ahead of what the fleet shows): as asked.
    assert evm.pinned("eth_getLogs", [{"fromBlock": "0x70"}], _resolve) is None
    assert evm.pinned("eth_getLogs", [{"blockHash": "0xb"}], _resolve) is None
    # A tag that stays unresolved: the call goes as asked.
    assert evm.pinned("eth_getBalance", ["0xa", "latest"], lambda tag: None) is None


def test_evm_answers_that_show_a_block_exists() -> None:
    evm = Evm()
    receipt = b'{"jsonrpc": "2.0", "id": 1, "result": {"blockNumber": "0x1b4", "status": "0x1"}}'
    assert evm.named_block("eth_getTransactionReceipt", receipt) == 0x1B4
    block = b'{"jsonrpc":"2.0","id":1,"result":{"number":"0x10","hash":"0xab"}}'
    assert evm.named_block("eth_getBlockByNumber", block) == 0x10
    pending = b'{"jsonrpc":"2.0","id":1,"result":{"blockNumber":null,"nonce":"0x1"}}'
    assert evm.named_block("eth_getTransactionByHash", pending) is None
    assert evm.named_block("eth_getBalance", b'{"result":"0x10"}') is None
    assert evm.head_result(0x1B4) == b'"0x1b4"'
    assert CHAINS["steem"].named_block("get_block", block) is None


def test_evm_nonce_used_answers_name_the_hash_to_look_up() -> None:
    evm = Evm()
    raw = "0x02f8"  # any signed bytes: the hash is Keccak-256 of them
    for message in (
        "nonce too low: next nonce 8, tx nonce 7",  # geth, erigon
        "OldNonce",  # nethermind
        "the tx doesn't have the correct nonce. account has nonce of: 5 tx has nonce of: 4",
    ):
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": message}}
        )
        assert evm.taken(body, [raw]) == "0x" + keccak256(bytes.fromhex("02f8")).hex()
    assert evm.taken(b'{"error":{"message":"insufficient funds"}}', [raw]) is None
    assert evm.taken(b'{"error":{"message":"nonce too low"}}', ["not hex"]) is None
    assert CHAINS["steem"].taken(b'{"error":{"message":"nonce too low"}}', [raw]) is None
