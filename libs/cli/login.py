"""``tetsu login``: trade a user's name and password for a bearer token (``/v1/tokens``)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .config import config_path, save_config
from .output import print_note, print_step
from .session import EndpointOption, connect

PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin instead of asking for it.",
    ),
]


def read_password(from_stdin: bool, *, confirm: bool) -> str:
    """The password from stdin, or asked for on the terminal without echo."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        # On stderr: `export TETSU_TOKEN=$(tetsu login alice)` must capture the token only.
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
    if not password:
        raise typer.BadParameter("the password is empty", param_hint="password")
    return password


def login(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Your user name.")],
    save: Annotated[
        bool,
        typer.Option(
            help="Write the token (and the endpoint) to the config file instead of printing "
            "it; later commands use it from there."
        ),
    ] = False,
    password_stdin: PasswordStdinOption = False,
    endpoint: EndpointOption = None,
) -> None:
    """Log in: ask for your password and get a token for the API.

    Prints the token, for `export TETSU_TOKEN=$(tetsu login NAME)`; with --save, writes it
    to ~/.config/tetsu/cli.toml (or TETSU_CLI_CONFIG), readable by you only.
    """
    password = read_password(password_stdin, confirm=False)
    with connect(ctx, endpoint, None, anonymous=True) as api:
        answer = api.login(name, password)
        if save:
            path = config_path(os.environ)
            save_config(path, endpoint=api.endpoint, token=answer["token"])
    expiry = answer.get("expires_at") or "an unknown time"
    if save:
        print_note(f"logged in as {name}; token saved to {path} (expires {expiry})")
        return
    print_step(f"logged in as {name} ({answer.get('role')}); the token expires {expiry}")
    typer.echo(answer["token"])
