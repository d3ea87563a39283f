"""The standalone host: the ASGI app on uvicorn (uvloop + httptools where available).

A protocol-level data plane will replace this module behind the same gateway.
"""

from __future__ import annotations

import importlib.util

import uvicorn

from .app import App
from .config import Config


def serve(config: Config) -> None:
    fast = importlib.util.find_spec("uvloop") is not None
    server = uvicorn.Server(
        uvicorn.Config(
            App(config),
            host=config.listen.host,
            port=config.listen.port,
            loop="uvloop" if fast else "asyncio",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            date_header=True,
            timeout_keep_alive=30,
        )
    )
    server.run()
