"""The ASGI app, at the name embedders import (``rpcbalancer.app.App``); it lives in
:mod:`rpcbalancer.hosts.asgi`."""

from __future__ import annotations

from .hosts.asgi import App

__all__ = ["App"]
