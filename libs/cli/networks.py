"""``tetsu network``: the isolated networks servers join (``/v1/networks``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .client import Resource
from .output import NETWORK_COLUMNS, OutputFormat, print_resource
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Networks: isolated layer-2 networks of your project that servers join.",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the network.")],
    segmentation_id: Annotated[
        int | None,
        typer.Option(min=1, max=4094, help="Admins: the VLAN id to use (else one is allocated)."),
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="Admins: the project (id or name) that owns it.")
    ] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a network in your project."""
    body: Resource = {"name": name}
    if segmentation_id is not None:
        body["segmentation_id"] = segmentation_id
    with connect(ctx, endpoint, token) as api:
        if project is not None:
            body["project_id"] = api.projects.find(project)["id"]
        network = api.networks.create(body)
    print_resource(network, fmt)


commands = ResourceCommands(
    app, "network", lambda api: api.networks, "Network id, or its name when unique."
)
commands.add_list(NETWORK_COLUMNS, "List your project's networks.")
commands.add_show("Show a network.")
commands.add_delete("Delete a network.")
