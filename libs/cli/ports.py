"""``tetsu port``: the network interfaces of nodes, by MAC address (``/v1/ports``, admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from .client import normalise_mac
from .output import PORT_COLUMNS, OutputFormat, print_list, print_resource
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Ports (admin): a node's network interfaces, and where each is cabled.",
    no_args_is_help=True,
)


def mac_address(value: str) -> str:
    """``value`` as the API stores a MAC (a typer callback)."""
    normalised = normalise_mac(value)
    if normalised is None:
        raise typer.BadParameter(f"{value!r} is not a MAC address like 52:54:00:12:34:56")
    return normalised


def mac_address_or_none(value: str | None) -> str | None:
    return None if value is None else mac_address(value)


def mac_addresses(values: list[str] | None) -> list[str] | None:
    return None if values is None else [mac_address(value) for value in values]


@app.command("create")
def create(
    ctx: typer.Context,
    address: Annotated[
        str, typer.Argument(help="MAC address of the interface.", callback=mac_address)
    ],
    node: Annotated[str, typer.Option(help="Node id or name the interface belongs to.")],
    switch_id: Annotated[
        str | None, typer.Option(help="Datapath id of the switch it is cabled to.")
    ] = None,
    switch_port: Annotated[
        str | None, typer.Option(help="Name or number of the switch port it is cabled to.")
    ] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Record a network interface of a node."""
    with connect(ctx, endpoint, token) as api:
        node_id = api.nodes.get(node)["id"]
        body = {"address": address, "node_id": node_id}
        if switch_id is not None:
            body["switch_id"] = switch_id
        if switch_port is not None:
            body["switch_port"] = switch_port
        port = api.ports.create(body)
    print_resource(port, fmt)


@app.command("list")
def list_ports(
    ctx: typer.Context,
    node: Annotated[str | None, typer.Option(help="Only this node's ports (id or name).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Only the port with this MAC.", callback=mac_address_or_none)
    ] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List ports, with what each is bound to (none, provisioning or tenant network)."""
    with connect(ctx, endpoint, token) as api:
        node_id = api.nodes.get(node)["id"] if node else None
        ports = api.ports.list(node_id=node_id, address=address)
    print_list(ports, PORT_COLUMNS, fmt)


commands = ResourceCommands(app, "port", lambda api: api.ports, "Port id or MAC address.")
commands.add_show("Show a port: where it is cabled and what it is bound to now.")
commands.add_delete("Forget a port.", label="address")
