"""Run a fake fleet until interrupted: ``python -m rpcbalancer.sim --node fast:latency=0.002``.

Each ``--node NAME[:field=value,...]`` takes :class:`Behaviour` fields. The node URLs are
printed as one JSON object (name -> URL) on the first line of standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from dataclasses import fields

import orjson

from .node import Behaviour, FakeNode

_TYPES = {f.name: f.type for f in fields(Behaviour)}
_KINDS: dict[str, str] = {}
"""Nodes given a kind of their own with ``chain=`` (``--node hm:chain=hivemind``)."""


def parse_node(text: str) -> tuple[str, Behaviour]:
    name, _, spec = text.partition(":")
    values: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition("=")
        if key == "chain":  # the node's kind (hivemind): taken by main
            _KINDS[name] = raw
            continue
        kind = _TYPES.get(key)
        if kind is None:
            raise argparse.ArgumentTypeError(f"unknown behaviour field {key!r}")
        values[key] = int(raw) if kind == "int" else raw if kind == "str" else float(raw)
    return name, Behaviour(**values)  # type: ignore[arg-type]


async def play(nodes: dict[str, FakeNode], script: list[list[object]]) -> None:
    """Apply timed changes: ``{"dead": true}`` stops a node, ``{"dead": false}`` revives it,
    anything else sets :class:`Behaviour` fields."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for at, name, changes in sorted(script, key=lambda step: float(step[0])):  # type: ignore[arg-type]
        await asyncio.sleep(max(0.0, started + float(at) - loop.time()))  # type: ignore[arg-type]
        node = nodes[str(name)]
        fields = dict(changes)  # type: ignore[call-overload]
        dead = fields.pop("dead", None)
        if fields:
            node.set(**fields)
        if dead is True:
            await node.stop()
        elif dead is False:
            await node.revive()


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rpcbalancer.sim")
    parser.add_argument("--node", action="append", type=parse_node, required=True)
    parser.add_argument("--chain", default="steem")
    parser.add_argument("--port", type=int, default=0, help="port of the first node (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address the nodes listen on")
    parser.add_argument(
        "--script",
        default="[]",
        help='changes over time, JSON: [[seconds, "node", {"latency": 0.2}], '
        '[seconds, "node", {"dead": true}], ...]',
    )
    args = parser.parse_args(argv)
    nodes = [
        FakeNode(name, b, chain=_KINDS.get(name, args.chain), seed=i, host=args.host)
        for i, (name, b) in enumerate(args.node)
    ]
    for i, node in enumerate(nodes):
        await node.start(args.port if i == 0 and args.port else None)
    sys.stdout.write(orjson.dumps({n.name: n.url for n in nodes}).decode() + "\n")
    sys.stdout.flush()
    by_name = {n.name: n for n in nodes}
    script = asyncio.create_task(play(by_name, orjson.loads(args.script)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    script.cancel()
    for node in nodes:
        with contextlib.suppress(Exception):
            await node.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
