"""``tetsu project``: the tenants that own servers, images and networks (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from .output import PROJECT_COLUMNS, OutputFormat, print_resource
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Projects (admin): the tenants that own servers, images and networks.",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name of the project.")],
    description: Annotated[str | None, typer.Option(help="What the project is for.")] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a project; then add users to it with `tetsu user create`."""
    body = {"name": name}
    if description is not None:
        body["description"] = description
    with connect(ctx, endpoint, token) as api:
        project = api.projects.create(body)
    print_resource(project, fmt)


commands = ResourceCommands(app, "project", lambda api: api.projects, "Project id or name.")
commands.add_list(PROJECT_COLUMNS, "List projects.")
commands.add_delete("Delete a project.")
