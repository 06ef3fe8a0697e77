"""``tetsu flavor``: the kinds of machine users can ask for (``/v1/flavors``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .output import FLAVOR_COLUMNS, OutputFormat, print_resource
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Flavors: the kinds of machine a server can ask for (admins create them).",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name, e.g. bm.small.")],
    resource_class: Annotated[str, typer.Option(help="Nodes of this resource class can serve it.")],
    cpus: Annotated[int, typer.Option(min=0, help="Least CPU count a node must have.")],
    memory_mb: Annotated[int, typer.Option(min=0, help="Least memory in MiB.")],
    disk_gb: Annotated[int, typer.Option(min=0, help="Least root disk size in GiB.")],
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a flavor (admin). A node fits when its resource class matches and each of
    its properties is at least the flavor's."""
    body = {
        "name": name,
        "resource_class": resource_class,
        "cpus": cpus,
        "memory_mb": memory_mb,
        "disk_gb": disk_gb,
    }
    with connect(ctx, endpoint, token) as api:
        flavor = api.flavors.create(body)
    print_resource(flavor, fmt)


commands = ResourceCommands(app, "flavor", lambda api: api.flavors, "Flavor id or name.")
commands.add_list(FLAVOR_COLUMNS, "List flavors.")
commands.add_show("Show a flavor.")
commands.add_delete("Delete a flavor (admin).")
