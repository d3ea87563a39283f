"""The ``rpcbalancer`` command. It parses arguments and calls into the package, nothing more."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..config import Config, load, parse_duration
from ..errors import ConfigError
from ..health.store import shown_url

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


def _logging(level: str, fmt: str = "text") -> None:
    from ..observe.logsetup import configure

    configure(level, fmt)


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the file).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the file).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes sharing the port.")
    ] = 1,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: serve HTTPS (with --tls-key).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for --tls-cert.")] = None,
) -> None:
    """Serve the balancer over HTTP (or HTTPS with --tls-cert/--tls-key)."""
    logging.captureWarnings(True)
    cfg = _load(
        config,
        host=host,
        port=port,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
    )
    try:
        prepare(cfg)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    from ..hosts.standalone import serve as run

    overrides = {
        "host": host,
        "port": port,
        "tls_cert": str(tls_cert) if tls_cert else None,
        "tls_key": str(tls_key) if tls_key else None,
    }
    run(cfg, workers=workers, loader=functools.partial(reread, config, overrides))


def reread(path: Path | None, overrides: dict[str, Any]) -> Config:
    """The configuration ``serve`` was started with, read again (a reload): the same file
    (or ``RPCBALANCER_CONFIG``) and flags; its TLS files must load."""
    cfg = load(path, overrides=overrides)
    from ..hosts.standalone import tls_context

    tls_context(cfg)
    return cfg


def prepare(cfg: Config) -> None:
    """What ``serve`` does before it serves: the log, a warning for each node whose TLS is
    not verified, and the server certificate loaded once (a bad one stops the start)."""
    _logging(cfg.log_level, cfg.log_format)
    for node in cfg.nodes:
        if not node.verify_tls:
            logging.getLogger("rpcbalancer").warning(
                "node %s: verify_tls is false: its TLS certificate is NOT verified", node.name
            )
    from ..hosts.standalone import tls_context

    tls_context(cfg)


@cli.command()
def probe(config: ConfigOption = None) -> None:
    """Probe every node once and print what the balancer would make of each."""
    cfg = _load(config)
    _logging("error")
    from .reports import run_probe

    rows, usable = asyncio.run(run_probe(cfg))
    table = Table(title=f"{cfg.chain} nodes, probed once")
    for column in ("node", "up", "latency", "head block", "lag", "version", "excluded because"):
        table.add_column(column, overflow="fold")
    for row in rows:  # as text: names and errors hold brackets that are not markup
        table.add_row(*(Text(cell) for cell in row))
    Console().print(table)
    if not usable:
        err.print("[red]no node is usable[/red]")
        raise typer.Exit(1)


StoreOption = Annotated[
    str | None, typer.Option("--store", help="Health store URL (overrides the config).")
]


@cli.command()
def canary(
    config: ConfigOption = None,
    store: StoreOption = None,
    interval: Annotated[
        str | None,
        typer.Option(help="Time between rounds: 60s, 1m, 500ms (default: probe.interval)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one full round and exit.")] = False,
) -> None:
    """Probe every node and record the results in the health store."""
    every = None
    if interval is not None:
        try:
            every = parse_duration(interval)
        except ValueError as exc:
            err.print(f"[red]--interval:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    cfg = _load(config, store=store)
    _logging(cfg.log_level, cfg.log_format)
    from .canary import run_canary

    records = asyncio.run(run_canary(cfg, interval=every, once=once))
    if once:
        ok = sum(r.ok for r in records)
        typer.echo(f"probed {len(records)} nodes, {ok} up; recorded in {cfg.store.split('@')[-1]}")


@cli.command()
def status(
    config: ConfigOption = None,
    store: StoreOption = None,
    window: Annotated[str, typer.Option(help="History window for the latency figures.")] = "1h",
) -> None:
    """Print the shared view from the health store; exits 1 when no node is usable."""
    cfg = _load(config, store=store)
    _logging("error")
    from .reports import run_status

    try:
        rows, usable = asyncio.run(run_status(cfg, parse_duration(window)))
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        err.print(
            f"[red]cannot read the health store:[/red] {type(exc).__name__}: {exc}", highlight=False
        )
        raise typer.Exit(2) from None
    table = Table(title=f"health store {shown_url(cfg.store)}")
    for column in (
        "node",
        "state",
        "p50",
        "p99",
        "head block",
        "lag",
        "version",
        "last error",
        "last seen",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:  # as text: names and errors hold brackets that are not markup
        table.add_row(*(Text(cell) for cell in row))
    Console().print(table)
    if not usable:
        err.print(
            "[red]no node is usable[/red]" if rows else "[red]the store holds no probes[/red]"
        )
        raise typer.Exit(1)


@cli.command()
def top(
    url: Annotated[str, typer.Option(help="The balancer to watch.")] = "http://127.0.0.1:8080",
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit.")] = False,
) -> None:
    """A live terminal view of a running balancer: nodes, states, latency, share, scores."""
    from .top import run_top

    raise typer.Exit(run_top(url, interval, once))


UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The running server (default: the config's listen address)."),
]


def _admin(config: Path | None, url: str | None, path: str) -> None:
    """POST an operator's request to a running server with the config's ``admin.key``, and
    print its answer (exit 1 when it was refused)."""
    import ssl
    import urllib.error
    import urllib.request

    cfg = _load(config)
    key = cfg.admin.key
    if key is None:
        err.print(
            "[red]admin.key is not set:[/red] the server serves no admin route; "
            "send it SIGHUP to reload (kill -HUP PID)",
            highlight=False,
        )
        raise typer.Exit(2)
    if url is None:
        scheme = "https" if cfg.listen.tls_cert else "http"
        host = "127.0.0.1" if cfg.listen.host in ("0.0.0.0", "::", "") else cfg.listen.host
        url = f"{scheme}://{host}:{cfg.listen.port}"
    request = urllib.request.Request(
        url.rstrip("/") + path, data=b"", method="POST", headers={"authorization": f"Bearer {key}"}
    )
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # (its own server)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read().decode()
    except OSError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    Console().print_json(text)
    if status != 200:
        raise typer.Exit(1)


@cli.command()
def reload(config: ConfigOption = None, url: UrlOption = None) -> None:
    """Make a running server read its configuration again (POST /admin/reload)."""
    _admin(config, url, "/admin/reload")


@cli.command()
def drain(
    name: Annotated[str, typer.Argument(help="The node's name or URL.")],
    config: ConfigOption = None,
    url: UrlOption = None,
    undo: Annotated[bool, typer.Option("--undo", help="Put the node back.")] = False,
) -> None:
    """Drain a node of a running server: no new requests; those it has finish."""
    from urllib.parse import quote

    _admin(config, url, f"/admin/nodes/{quote(name, safe='')}/{'undrain' if undo else 'drain'}")


@cli.command()
def demo(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8080,
    rate: Annotated[float, typer.Option(min=0.1, max=500, help="Requests per second.")] = 5.0,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds.")
    ] = None,
) -> None:
    """A simulated fleet (fast, slow, flaky, lagging) behind a balancer, with light traffic."""
    _logging("warning")
    from ..hosts.standalone import run_loop
    from .demo import run_demo

    run_loop(run_demo(host, port, rate, duration))


lambda_cli = typer.Typer(help="AWS Lambda: build the deployment zip.", no_args_is_help=True)
cli.add_typer(lambda_cli, name="lambda")


@lambda_cli.command("package")
def lambda_package(
    arch: Annotated[str, typer.Option(help="Target architecture: arm64 or x86_64.")] = "arm64",
    python: Annotated[str, typer.Option(help="Target Python version of the runtime.")] = "3.12",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Zip path (default dist/rpcbalancer-lambda.zip)."),
    ] = None,
    extra: Annotated[
        list[str] | None,
        typer.Option(help="Store client to include: redis, postgres (repeatable)."),
    ] = None,
    compile_with: Annotated[
        str | None,
        typer.Option(help="Interpreter of the target version for byte-code (found if omitted)."),
    ] = None,
    wheel: Annotated[
        Path | None,
        typer.Option(
            help="An rpcbalancer wheel built for the target (manylinux2014): its "
            "compiled modules go in the zip."
        ),
    ] = None,
    interpreted: Annotated[
        bool, typer.Option(help="Leave the compiled modules out: the source runs.")
    ] = False,
) -> None:
    """Build the Lambda deployment zip (wheels for the target platform, no boto3/uvloop)."""
    from ..hosts.lambda_package import PackageError, build

    path = output or Path("dist") / "rpcbalancer-lambda.zip"  # where the template looks
    try:
        built = build(
            path,
            arch=arch,
            python=python,
            extras=extra or (),
            compile_with=compile_with,
            wheel=wheel,
            interpreted=interpreted,
        )
    except PackageError as exc:
        err.print(f"[red]cannot build the package:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(
        f"{built.path}: {built.size / 1e6:.2f} MB, {built.files} files, "
        f"python {python} {arch}, with {', '.join(built.requirements)}; "
        f"rpcbalancer's modules: {built.modules}"
    )
    if built.compiled_with is None:
        err.print(
            f"[yellow]no python{python} found: the zip has no byte-code, so every cold start "
            "compiles the modules (give one with --compile-with)[/yellow]"
        )


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    cli()
