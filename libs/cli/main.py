"""The ``tetsu`` command."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from libs import rpc

from . import (
    demo,
    flavors,
    hypervisors,
    images,
    login,
    networks,
    nodes,
    ops,
    ports,
    projects,
    servers,
    users,
)
from .session import parse_pairs

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"

app = typer.Typer(
    help=(
        "tetsu: a bare-metal cloud. Instances on physical machines over IPMI, PXE and "
        "OpenFlow; services that talk through RabbitMQ.\n\n"
        "The message bus comes from --url or TETSU_TRANSPORT_URL "
        "(amqp://user:pass@host:5672/vhost). Run `tetsu demo` to see a call and casts "
        "between two processes."
    ),
    no_args_is_help=True,
    add_completion=False,
)
rpc_app = typer.Typer(
    help="Send a message on the bus by hand (debugging and operations).", no_args_is_help=True
)
app.add_typer(rpc_app, name="rpc")
app.add_typer(servers.app, name="server")
app.add_typer(images.app, name="image")
app.add_typer(flavors.app, name="flavor")
app.add_typer(networks.app, name="network")
app.add_typer(nodes.app, name="node")
app.add_typer(hypervisors.app, name="hypervisor")
app.add_typer(ports.app, name="port")
app.add_typer(projects.app, name="project")
app.add_typer(users.app, name="user")
app.command("login")(login.login)
app.command("service")(ops.service_command)
app.command("all-in-one")(ops.all_in_one_command)
app.command("demo-seed")(ops.demo_seed_command)
app.add_typer(ops.db_app, name="db")

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="TETSU_TRANSPORT_URL",
        help="Message bus: amqp://user:pass@host:port/vhost, or memory://.",
    ),
]
console = Console()


@app.command("demo")
def demo_command(
    url: UrlOption = DEFAULT_URL,
    casts: Annotated[int, typer.Option(min=1, max=10_000, help="How many casts to send.")] = 5,
) -> None:
    """Start a demo server in a second process and talk to it with a call and casts."""
    try:
        process = demo.start_server_process(url)
        try:
            rows = demo.run_client(url, casts)
        finally:
            process.terminate()
            process.wait(timeout=30)
    except (demo.DemoError, rpc.RPCError) as exc:
        console.print(f"[red]demo failed[/red]: {exc}")
        raise typer.Exit(1) from None
    table = Table(
        title=f"libs/rpc demo: this process (pid {os.getpid()}) -> demo-server "
        f"(pid {process.pid}) over the bus"
    )
    table.add_column("message")
    table.add_column("answer")
    table.add_column("ms", justify="right")
    for what, answer, millis in rows:
        table.add_row(what, answer, f"{millis:.2f}" if millis else "")
    console.print(table)


@app.command("demo-server", hidden=True)
def demo_server_command(url: UrlOption = DEFAULT_URL) -> None:
    """Run the demo server (started by `tetsu demo`)."""
    demo.serve(url)


TopicArg = Annotated[str, typer.Argument(help="Service topic, e.g. conductor.")]
MethodArg = Annotated[str, typer.Argument(help="Exposed method name.")]
ArgsArg = Annotated[list[str] | None, typer.Argument(help="name=value; values are JSON.")]
ServerOption = Annotated[str | None, typer.Option(help="Send to this server only.")]
VersionOption = Annotated[str, typer.Option(help="API version to request.")]
ExchangeOption = Annotated[str, typer.Option(help="Exchange of the deployment.")]


def _send(
    url: str,
    exchange: str,
    target: rpc.Target,
    send: Callable[[rpc.RPCClient], Any],
    timeout: float = 30.0,
) -> Any:
    """Run ``send`` with a client on ``target``; an RPC error is printed, exit status 1."""
    try:
        transport = rpc.transport_from_url(url, exchange=exchange)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--url'") from None
    try:
        return send(rpc.RPCClient(transport, target, timeout=timeout))
    except rpc.RPCError as exc:
        console.print(f"[red]{type(exc).__name__}[/red]: {exc}")
        raise typer.Exit(1) from None
    finally:
        transport.close()


@rpc_app.command("call")
def rpc_call(
    topic: TopicArg,
    method: MethodArg,
    args: ArgsArg = None,
    url: UrlOption = DEFAULT_URL,
    server: ServerOption = None,
    version: VersionOption = "1.0",
    exchange: ExchangeOption = "tetsu",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait.")] = 30.0,
) -> None:
    """Call METHOD on TOPIC and print the result as JSON."""
    kwargs = parse_pairs(args, "ARGS")
    result = _send(
        url,
        exchange,
        rpc.Target(topic, server=server, version=version),
        lambda client: client.call(rpc.RequestContext.admin(), method, **kwargs),
        timeout,
    )
    console.print_json(json.dumps(result))


@rpc_app.command("cast")
def rpc_cast(
    topic: TopicArg,
    method: MethodArg,
    args: ArgsArg = None,
    url: UrlOption = DEFAULT_URL,
    server: ServerOption = None,
    fanout: Annotated[bool, typer.Option(help="Send to every server of the topic.")] = False,
    version: VersionOption = "1.0",
    exchange: ExchangeOption = "tetsu",
) -> None:
    """Cast METHOD to TOPIC (returns once the broker has it)."""
    kwargs = parse_pairs(args, "ARGS")
    target = rpc.Target(topic, server=server, fanout=fanout, version=version)
    _send(
        url,
        exchange,
        target,
        lambda client: client.cast(rpc.RequestContext.admin(), method, **kwargs),
    )
    console.print("sent")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
