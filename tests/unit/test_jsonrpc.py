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


def test_invalid_member_names_its_position() -> None:
    problem = jsonrpc.parse(b'[{"method":"a","id":1}, {"id":2}]')
    assert isinstance(problem, RpcProblem)
    assert "member 1" in problem.message


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
        assert len(result.methods) == len(result.ids) >= 1
