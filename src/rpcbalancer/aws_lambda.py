"""The AWS Lambda handlers, at the names deployed functions are configured with
(``rpcbalancer.aws_lambda.handler`` and ``rpcbalancer.aws_lambda.canary_handler``, as the SAM
template says); they live in :mod:`rpcbalancer.hosts.aws_lambda`."""

from __future__ import annotations

from .hosts.aws_lambda import LambdaHost, canary_handler, event_kind, handler, lambda_config

__all__ = ["LambdaHost", "canary_handler", "event_kind", "handler", "lambda_config"]
