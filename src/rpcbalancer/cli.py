"""The ``rpcbalancer`` command. It parses arguments and calls into the package, nothing more."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import Config, load
from .errors import ConfigError

cli = typer.Typer(
    name="rpcbalancer",
    help="A load balancer for blockchain JSON-RPC API nodes (Steem, Hive, Blurt, EVM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: built-in Steem nodes)."),
]


def _load(path: Path | None, **overrides: Any) -> Config:
    try:
        return load(path, overrides=overrides)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the file).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the file).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes sharing the port.")
    ] = 1,
) -> None:
    """Serve the balancer over HTTP."""
    logging.captureWarnings(True)
    cfg = _load(config, host=host, port=port)
    _logging(cfg.log_level)
    from .server import serve as run

    run(cfg, workers=workers)


@cli.command()
def probe(config: ConfigOption = None) -> None:
    """Probe every node once and print what the balancer would make of each."""
    cfg = _load(config)
    _logging("error")
    from .probe_report import run_probe

    rows, usable = asyncio.run(run_probe(cfg))
    table = Table(title=f"{cfg.chain} nodes, probed once")
    for column in ("node", "up", "latency", "head block", "lag", "version", "excluded because"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if not usable:
        err.print("[red]no node is usable[/red]")
        raise typer.Exit(1)


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    cli()
