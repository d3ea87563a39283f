"""The one error tree of rpcbalancer.

    RpcBalancerError
    ├── ConfigError                 the configuration is invalid (names the key and the value)
    ├── NoHealthyNode               no node may be tried for this request at all
    └── UpstreamError               one try against one node failed
        ├── UpstreamConnectError    no connection: the request never reached the node
        ├── UpstreamTimeout         the node did not answer within the try's timeout
        └── UpstreamBadResponse     the node answered, but the answer is unusable
                                    (5xx, HTML or non-JSON body, a JSON-RPC error of a sick node)

Foreign exceptions (aiohttp, OSError, asyncio.TimeoutError) are translated into this tree at
one boundary, the upstream transport. Turning an error into an HTTP or JSON-RPC response
happens in the gateway only.
"""

from __future__ import annotations


class RpcBalancerError(Exception):
    """Base of every error rpcbalancer raises on purpose."""


class ConfigError(RpcBalancerError):
    """The configuration cannot be used; the message names the key and the bad value."""


class NoHealthyNode(RpcBalancerError):
    """No node is left to try for a request."""


class UpstreamError(RpcBalancerError):
    """A try against one node failed.

    ``sent`` tells whether the request's bytes may have reached the node: only a request
    that surely did not (``sent is False``) may be re-sent when it is not idempotent.
    """

    sent: bool = True

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.reason = message


class UpstreamConnectError(UpstreamError):
    """The connection to the node failed before the request was written."""

    sent = False


class UpstreamTimeout(UpstreamError):
    """The node did not answer in time."""


class UpstreamBadResponse(UpstreamError):
    """The node answered with something a client must not be given."""

    def __init__(self, node: str, message: str, status: int = 0) -> None:
        super().__init__(node, message)
        self.status = status
