"""Subscribes through rpcbalancer's WebSocket with web3.py's WebSocketProvider, as an app
would: new heads and the logs of one topic (``eth_subscribe``).

    .venv-clients/bin/python subscribe.py WS_URL SECONDS TOPIC

After SECONDS, prints one JSON object: the head numbers in the order they came (with their
hashes and parent hashes), the logs as ``[blockNumber, transactionHash, logIndex]``, and the
errors seen. It runs in the clients' own venv (``make clients``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from web3 import AsyncWeb3, WebSocketProvider


async def main(url: str, seconds: float, topic: str) -> dict[str, Any]:
    out: dict[str, Any] = {"heads": [], "logs": [], "errors": [], "subscribed": False}
    try:
        async with AsyncWeb3(WebSocketProvider(url)) as w3:
            heads = await w3.eth.subscribe("newHeads")
            logs = await w3.eth.subscribe("logs", {"topics": [topic]})
            out["subscribed"] = True

            async def read() -> None:
                async for message in w3.socket.process_subscriptions():
                    result = message["result"]
                    if message["subscription"] == heads:
                        out["heads"].append(
                            [result["number"], result["hash"].to_0x_hex(),
                             result["parentHash"].to_0x_hex()]
                        )  # fmt: skip
                    elif message["subscription"] == logs:
                        out["logs"].append(
                            [result["blockNumber"], result["transactionHash"].to_0x_hex(),
                             result["logIndex"]]
                        )  # fmt: skip

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read(), seconds)
    except Exception as exc:  # the test reads what failed
        out["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))))
