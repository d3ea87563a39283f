"""Answers made here keep a node's bytes exact: batches with refused members, cached results."""

from __future__ import annotations

from rpcbalancer import jsonrpc
from rpcbalancer.cache import result_of
from rpcbalancer.jsonrpc import RpcCall
from rpcbalancer.proxy.answer import with_rejected
from rpcbalancer.proxy.coalesce import with_id

BIG = 2**70


def test_refused_members_join_a_node_answer_that_holds_a_big_integer() -> None:
    call = jsonrpc.parse(b'[{"jsonrpc":"2.0","method":"m","id":1},{"id":2}]')
    assert isinstance(call, RpcCall) and call.rejected
    node = b'[{"jsonrpc":"2.0","result":%d,"id":1}]' % BIG
    answers = jsonrpc.loads(with_rejected(node, call))
    assert answers[0]["result"] == BIG  # exact, not 1.1805916207174113e+21
    assert answers[1]["id"] == 2 and answers[1]["error"]["code"] == jsonrpc.INVALID_REQUEST


def test_a_cached_or_coalesced_answer_keeps_a_big_integer() -> None:
    body = b'{"jsonrpc":"2.0","result":{"supply":%d},"id":1}' % BIG
    assert result_of(body) == {"supply": BIG}
    assert b"%d" % BIG in with_id(body, "other")
