"""API Gateway's REST (non-proxy) integration, as far as the original design's event needs it.

The mapping template is taken from ``deploy/aws/template.yaml`` and rendered by a Velocity
engine (``airspeed``) with the variables API Gateway gives a template: ``$input``, ``$util``,
``$context`` and ``$stageVariables``. The result is the event Lambda would receive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import airspeed
import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "aws" / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Sub``, ``!Ref``...) read as plain values."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tag)


def load_template() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return doc


def mapping_template(method: str = "post") -> str:
    api = load_template()["Resources"]["OriginalApi"]["Properties"]["DefinitionBody"]
    integration = api["paths"]["/"][method]["x-amazon-apigateway-integration"]
    template: str = integration["requestTemplates"]["application/json"]
    return template


class _Input:
    def __init__(self, body: str, params: dict[str, dict[str, str]]) -> None:
        self._body = body
        self._params = params

    def json(self, path: str) -> str:
        assert path == "$", "only the whole body is used by the template"
        return self._body if self._body.strip() else "{}"

    def params(self) -> dict[str, dict[str, str]]:
        return self._params


class _Util:
    @staticmethod
    def escapeJavaScript(value: Any) -> str:
        text = str(value)
        for plain, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
            text = text.replace(plain, escaped)
        return text


def original_event(
    method: str = "POST",
    body: str = "",
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    source_ip: str = "198.51.100.4",
    stage_variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The event API Gateway sends for one request through the original mapping template."""
    params = {"path": {}, "querystring": dict(query or {}), "header": dict(headers or {})}
    context = {
        "httpMethod": method,
        "stage": "prod",
        "apiId": "a1b2c3d4e5",
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        "resourceId": "r00t1d",
        "resourcePath": "/",
        "identity": {"sourceIp": source_ip, "userAgent": "curl/8.5.0", "accountId": ""},
    }
    rendered = airspeed.Template(mapping_template(method.lower())).merge(
        {
            "input": _Input(body, params),
            "util": _Util(),
            "context": context,
            "stageVariables": dict(stage_variables or {}),
        }
    )
    event: dict[str, Any] = json.loads(rendered)
    return event
