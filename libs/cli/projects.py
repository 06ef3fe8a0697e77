"""``tetsu project``: the tenants that own servers, images and networks (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from .output import PROJECT_COLUMNS, OutputFormat, print_list, print_note, print_resource
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


@app.command("list")
def list_projects(
    ctx: typer.Context,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List projects."""
    with connect(ctx, endpoint, token) as api:
        projects = api.projects.list()
    print_list(projects, PROJECT_COLUMNS, fmt)


@app.command("delete")
def delete(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="Project id or name.")],
    endpoint: EndpointOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a project."""
    with connect(ctx, endpoint, token) as api:
        found = api.projects.find(project)
        api.projects.delete(found["id"])
    print_note(f"deleted project {found['name']} ({found['id']})")
