"""Property-based tests (hypothesis): the config loader and the Lambda event adapters take
anything and either work or say clearly why not; no other exception escapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcbalancer.aws_lambda import LambdaHost, lambda_config
from rpcbalancer.config import Config, from_mapping
from rpcbalancer.errors import ConfigError

from ..apigw import original_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [*sorted(Config.model_fields), "rateLimit", "nodes", "timeouts", "weights", "xyz"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_config_loader_answers_anything_with_a_config_or_a_config_error(
    raw: dict[str, Any],
) -> None:
    try:
        config = from_mapping(raw, env={"SECRET": "s3cr3t-value"}, source="prop")
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(config, Config) and config.nodes
        return
    assert message.startswith("prop")  # names the source, then the key


def _events() -> st.SearchStrategy[Any]:
    shapes = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    shapes.append(original_event("POST", '{"jsonrpc":"2.0","method":"a","id":1}'))

    def mutate(base: dict[str, Any]) -> st.SearchStrategy[Any]:
        def apply(changes: dict[str, Any], drop: list[str]) -> dict[str, Any]:
            event = copy.deepcopy(base)
            for key in drop:
                event.pop(key, None)
            event.update(changes)
            return event

        keys = st.sampled_from(sorted(base))
        return st.builds(
            apply, st.dictionaries(keys, values, max_size=3), st.lists(keys, max_size=2)
        )

    return st.sampled_from(shapes).flatmap(mutate) | values


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_lambda_event_gets_an_answer_lambda_can_serialise(data: st.DataObject) -> None:
    quick = {"connect": 0.2, "per_try": 0.2, "total": 0.4}
    config = json.dumps({"access_log": {"enabled": False}, "timeouts": quick})
    host = _HOSTS.get("host") or LambdaHost(
        lambda_config({"RPCBALANCER_NODES": "http://127.0.0.1:9", "RPCBALANCER_CONFIG": config})
    )
    _HOSTS["host"] = host
    event = data.draw(_events())
    result = host.invoke(event, None)
    json.dumps(result)
    if isinstance(result, dict) and "statusCode" in result:
        assert isinstance(result["statusCode"], int) and isinstance(result.get("body", ""), str)


_HOSTS: dict[str, LambdaHost] = {}


def teardown_module() -> None:
    host = _HOSTS.pop("host", None)
    if host is not None:
        host.close()
