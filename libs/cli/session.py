"""What every API command shares: its connection options, the client it gets from typer's
context (tests put their own :class:`Runtime` there) and errors printed as one line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer

from .client import APIClient, APIError
from .config import CLIConfig, CLIConfigError, load_config
from .output import OutputFormat, print_error

EXIT_FAILED = 1  # the API refused, or the work it did failed
EXIT_TIMED_OUT = 2  # --wait gave up; the work may still finish


def default_client(config: CLIConfig) -> APIClient:
    return APIClient(config.endpoint, config.token, on_retry=say_retrying)


def say_retrying(error: APIError, seconds: float) -> None:
    """One line on stderr while a request refused for a busy node waits to be sent again."""
    typer.echo(f"{error.reason}; trying again in {seconds:g} s", err=True)


@dataclass(frozen=True)
class Runtime:
    """What the commands take from the world outside: the API and the clock.

    The ``tetsu`` command uses the defaults; tests pass another as typer's ``obj``
    (``CliRunner().invoke(app, args, obj=Runtime(...))``).
    """

    make_client: Callable[[CLIConfig], APIClient] = default_client
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def runtime(ctx: typer.Context) -> Runtime:
    return ctx.find_object(Runtime) or Runtime()


EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="URL of the tetsu API. Else TETSU_ENDPOINT, then the config file "
        "(~/.config/tetsu/cli.toml or TETSU_CLI_CONFIG), then http://127.0.0.1:8000.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Bearer token. Else TETSU_TOKEN, then the config file (see `tetsu login`).",
        show_default=False,
    ),
]
FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", help="table for people, json for scripts (the API's objects)."),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, help="With --wait: seconds to wait before giving up.")
]
PollOption = Annotated[
    float, typer.Option("--poll-interval", min=0.1, help="With --wait: seconds between checks.")
]


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the answer to end the command."""
    print_error(message)
    return typer.Exit(code)


@contextmanager
def connect(
    ctx: typer.Context, endpoint: str | None, token: str | None, *, anonymous: bool = False
) -> Iterator[APIClient]:
    """The API client for a command (``anonymous``: one that sends no token); an
    APIError inside ends the command with one line on stderr, ``error: <reason> (<code>,
    <request id>)``, and exit status 1."""
    try:
        config = load_config(endpoint=endpoint, token=token)
    except CLIConfigError as exc:
        raise fail(str(exc)) from None
    if anonymous:  # e.g. logging in: a stale token must not spoil the request
        config = replace(config, token=None)
    try:
        with runtime(ctx).make_client(config) as client:
            yield client
    except APIError as exc:
        print_error(str(exc))
        if exc.status == 401 and not config.token and not anonymous:
            typer.echo(
                "hint: no token given: use --token, TETSU_TOKEN or `tetsu login NAME --save`",
                err=True,
            )
        raise typer.Exit(EXIT_FAILED) from None
    except CLIConfigError as exc:
        raise fail(str(exc)) from None


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """``name=value`` words as a dict; values are JSON when they parse as JSON (``623``,
    ``true``), else strings (driver info, ``tetsu rpc call`` arguments)."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not name=value", param_hint=option)
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values
