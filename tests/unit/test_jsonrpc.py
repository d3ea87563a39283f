from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from rpcbalancer import jsonrpc
from rpcbalancer.jsonrpc import RpcCall, RpcProblem


def test_single_request_names_its_method_and_id() -> None:
    call = jsonrpc.parse(b'{"jsonrpc":"2.0","method":"condenser_api.get_version","id":"x"}')
    assert call == RpcCall(methods=("condenser_api.get_version",), ids=("x",), batch=False)


def test_call_is_unwrapped_to_api_dot_method() -> None:
    body = b'{"jsonrpc":"2.0","method":"call","params":["login_api","get_version",[]],"id":3}'
    call = jsonrpc.parse(body)
    assert isinstance(call, RpcCall)
    assert call.methods == ("login_api.get_version",)


def test_batch_keeps_every_member_in_order() -> None:
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "method": "a.b", "id": 1},
            {"jsonrpc": "2.0", "method": "c.d", "id": None},
        ]
    )
    call = jsonrpc.parse(body)
    assert call == RpcCall(methods=("a.b", "c.d"), ids=(1, None), batch=True)


def test_invalid_json_is_a_parse_error() -> None:
    problem = jsonrpc.parse(b"{nope")
    assert isinstance(problem, RpcProblem)
    assert problem.code == jsonrpc.PARSE_ERROR
    doc = orjson.loads(problem.body())
    assert doc["error"]["code"] == -32700
    assert doc["id"] is None


def test_empty_batch_and_scalars_are_invalid_requests() -> None:
    for body in (b"[]", b"3", b'"x"', b"null"):
        problem = jsonrpc.parse(body)
        assert isinstance(problem, RpcProblem), body
        assert problem.code == jsonrpc.INVALID_REQUEST


def test_a_batch_keeps_its_valid_members_and_answers_the_others() -> None:
    call = jsonrpc.parse(b'[{"method":"a","id":1}, {"id":2}, 7, {"method":"b","id":"x"}]')
    assert isinstance(call, RpcCall)
    assert call.methods == ("a", "b") and call.ids == (1, "x")
    assert [(i, code) for i, code, _ in call.rejected] == [(2, -32600), (None, -32600)]
    assert "member 1" in call.rejected[0][2] and "member 2" in call.rejected[1][2]
    assert orjson.loads(call.body or b"") == [{"method": "a", "id": 1}, {"method": "b", "id": "x"}]
    nothing_valid = jsonrpc.parse(b"[1, 2, 3]")
    assert isinstance(nothing_valid, RpcCall)
    assert nothing_valid.methods == () and len(nothing_valid.rejected) == 3


def test_notifications_are_counted_and_a_batch_of_them_is_silent() -> None:
    single = jsonrpc.parse(b'{"jsonrpc":"2.0","method":"a"}')
    assert isinstance(single, RpcCall) and single.silent
    batch = jsonrpc.parse(b'[{"method":"a"},{"method":"b"}]')
    assert isinstance(batch, RpcCall) and batch.silent and batch.notifications == 2
    mixed = jsonrpc.parse(b'[{"method":"a"},{"method":"b","id":null}]')
    assert isinstance(mixed, RpcCall) and not mixed.silent and mixed.notifications == 1


def test_huge_ids_are_echoed_exactly() -> None:
    big = 2**70 + 1
    call = jsonrpc.parse(b'{"method":"a","id":%d}' % big)
    assert isinstance(call, RpcCall) and call.ids == (big,)
    assert json.loads(jsonrpc.error_body_for(call, -32001, "x"))["id"] == big
    problem = jsonrpc.parse(b'{"method":5,"id":%d}' % big)
    assert isinstance(problem, RpcProblem) and json.loads(problem.body())["id"] == big


def test_repeated_keys_that_route_are_refused() -> None:
    body = b'{"method":"condenser_api.broadcast_transaction","method":"condenser_api.get_config","id":1}'
    problem = jsonrpc.parse(body)
    assert isinstance(problem, RpcProblem) and "'method' appears twice" in problem.message
    fine = jsonrpc.parse(b'{"method":"a","params":[{"id":1},{"id":2}],"id":3}')
    assert isinstance(fine, RpcCall) and fine.ids == (3,)


def test_limits_on_batch_length_and_depth() -> None:
    long = jsonrpc.parse(orjson.dumps([{"method": "a", "id": i} for i in range(5)]), max_batch=4)
    assert isinstance(long, RpcProblem) and "at most 4" in long.message
    deep = jsonrpc.parse(b'{"method":"a","params":' + b"[" * 40 + b"]" * 40 + b',"id":1}')
    assert isinstance(deep, RpcProblem) and "nested deeper than 32" in deep.message
    wrong_version = jsonrpc.parse(b'{"jsonrpc":"1.0","method":"a","id":1}')
    assert isinstance(wrong_version, RpcProblem)


def test_invalid_request_echoes_a_usable_id() -> None:
    problem = jsonrpc.parse(b'{"method": 5, "id": 42}')
    assert isinstance(problem, RpcProblem)
    assert orjson.loads(problem.body())["id"] == 42


def test_error_body_for_a_batch_answers_each_member() -> None:
    call = RpcCall(methods=("a", "b"), ids=(1, "two"), batch=True)
    doc = orjson.loads(jsonrpc.error_body_for(call, jsonrpc.NO_NODE, "down"))
    assert [m["id"] for m in doc] == [1, "two"]
    assert all(m["error"]["code"] == jsonrpc.NO_NODE for m in doc)


def test_response_errors_reads_only_what_it_must() -> None:
    assert jsonrpc.response_errors(b'{"result": 1}') == []
    assert jsonrpc.response_errors(b"<html>oops</html>") is None
    errors = jsonrpc.response_errors(b'[{"result":1},{"error":{"code":-1,"message":"m"}}]')
    assert errors == [{"code": -1, "message": "m"}]


@given(st.binary(max_size=512))
def test_parse_never_raises_on_bytes(body: bytes) -> None:
    assert isinstance(jsonrpc.parse(body), RpcCall | RpcProblem)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_parse_answers_every_json_document(doc: object) -> None:
    result = jsonrpc.parse(json.dumps(doc).encode())
    if isinstance(result, RpcProblem):
        error = orjson.loads(result.body())
        assert error["jsonrpc"] == "2.0"
        assert isinstance(error["error"]["message"], str)
    else:
        assert len(result.methods) == len(result.ids)
        assert len(result.methods) + len(result.rejected) >= 1
        assert result.batch or len(result.methods) == 1


BIG = 2**70  # beyond 64 bits: orjson reads it as a float


def test_loads_keeps_integers_beyond_64_bits_exact() -> None:
    doc = jsonrpc.loads(b'{"result":{"supply":%d,"block_id":"0000000000000000000000"}}' % BIG)
    assert doc["result"]["supply"] == BIG and isinstance(doc["result"]["supply"], int)
    assert jsonrpc.loads(b"[1.5, 2]") == [1.5, 2]  # the usual case stays orjson's


def test_params_beyond_64_bits_are_read_exactly() -> None:
    """Two calls that differ only past a float's precision are two calls (keyed apart by the
    cache, sent as asked when re-encoded)."""
    one = jsonrpc.parse(b'{"jsonrpc":"2.0","method":"m","params":[%d],"id":1}' % BIG)
    two = jsonrpc.parse(b'{"jsonrpc":"2.0","method":"m","params":[%d],"id":1}' % (BIG + 1))
    assert isinstance(one, RpcCall) and isinstance(two, RpcCall)
    assert one.members[0]["params"] == [BIG] and two.members[0]["params"] == [BIG + 1]
    assert jsonrpc.dumps(one.members[0]) != jsonrpc.dumps(two.members[0])


def test_a_number_is_read_from_an_answers_bytes_without_parsing_it() -> None:
    body = b'{"result":{"x":"head_block_number","head_block_number" :  81234567, "y": 2}}'
    assert jsonrpc.number_after(body, b'"head_block_number"') == 81234567  # after the string
    assert jsonrpc.number_after(b'{"a": "1"}', b'"a"') is None  # a string is not a number
    assert jsonrpc.number_after(b'{"b": 1}', b'"a"') is None
