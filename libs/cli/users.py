"""``tetsu user``: people and programs that log in to the API (``/v1/users``, admin)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from .login import PasswordStdinOption, read_password
from .output import USER_COLUMNS, OutputFormat, print_resource
from .resource_commands import ResourceCommands
from .session import EndpointOption, FormatOption, TokenOption, connect

app = typer.Typer(
    help="Users (admin): who may log in, in which project, with which role.",
    no_args_is_help=True,
)


class Role(enum.StrEnum):
    MEMBER = "member"
    ADMIN = "admin"


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique user name (what `tetsu login` takes).")],
    project: Annotated[str, typer.Option(help="Project id or name the user works in.")],
    role: Annotated[
        Role, typer.Option(help="member: their project's resources; admin: everything.")
    ] = Role.MEMBER,
    password_stdin: PasswordStdinOption = False,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a user; the password is asked for twice (or read with --password-stdin)."""
    password = read_password(password_stdin, confirm=True)
    with connect(ctx, endpoint, token) as api:
        project_id = api.projects.find(project)["id"]
        user = api.users.create(
            {"name": name, "password": password, "project_id": project_id, "role": role.value}
        )
    print_resource(user, fmt)


commands = ResourceCommands(app, "user", lambda api: api.users, "User id or name.")
commands.add_list(USER_COLUMNS, "List users.")
commands.add_delete("Delete a user.")
