"""Operator commands: run a service, run everything in one process, migrate the database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from alembic.util import CommandError
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import OperationalError

from libs.config import CommonSettings, ConfigFileError
from libs.db import SchemaMissing, upgrade
from libs.log import setup_logging
from services.conductor.hypervisor import CapacityUnknown

from .client import APIError
from .demo_cloud import (
    FLAVOR,
    IMAGE,
    NETWORK,
    DemoFailed,
    seed,
    seed_and_deploy,
    wait_for_conductors,
)
from .processes import (
    ServiceName,
    dump_stacks_on_signal,
    freeze_startup_objects,
    run_service,
    wait_for_signal,
)
from .session import EndpointOption, TokenOption, connect, fail

console = Console()
LOG = logging.getLogger(__name__)


@contextmanager
def startup_errors() -> Iterator[None]:
    """Turn the usual start-up failures into one clear line and exit status 1, not a
    traceback: bad settings, an unreachable database, a port already in use."""
    try:
        yield
    except ConfigFileError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise _fail(f"invalid settings: {problems}") from None
    except SchemaMissing as exc:
        raise _fail(str(exc)) from None
    except OperationalError as exc:
        raise _fail(f"cannot use the database: {exc.orig or exc}") from None
    except CapacityUnknown as exc:
        raise _fail(f"cannot read this hypervisor's capacity: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot start: {exc}") from None


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"error: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)


def service_command(
    name: Annotated[ServiceName, typer.Argument(help="Which service to run in this process.")],
    migrate: Annotated[
        bool, typer.Option(help="Apply database migrations before starting.")
    ] = False,
) -> None:
    """Run one service (api, scheduler, conductor or netctl) until SIGTERM or Ctrl-C.

    Settings come from TETSU_* environment variables (TETSU_DATABASE_URL,
    TETSU_TRANSPORT_URL, TETSU_HOSTNAME, TETSU_ADMIN_TOKEN, TETSU_PORT, ...) or the TOML
    file named by TETSU_CONFIG: its top-level keys apply to every service, its [api],
    [scheduler], [conductor] and [netctl] tables to one. See docs/operations.md.

    kill -USR2 PID writes every thread's stack to stderr, without stopping the service.
    """
    with startup_errors():
        run_service(name, migrate=migrate)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the schema of TETSU_DATABASE_URL (safe to run again)."""
    with startup_errors():
        settings = CommonSettings()
        setup_logging("db", settings.log_level)
        try:
            upgrade(settings.database_url, revision)
        except CommandError as exc:  # Alembic's: e.g. no such revision
            raise _fail(f"cannot upgrade to {revision!r}: {exc}") from None
    console.print(f"database at revision {revision}")


def all_in_one_command(
    state_dir: Annotated[
        Path, typer.Option(help="Where the SQLite database, images and admin token live.")
    ] = Path(".tetsu"),
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API (0: any free port).")] = 8000,
    demo: Annotated[
        bool,
        typer.Option(help="Enroll demo nodes (fake hardware) and create one instance end to end."),
    ] = False,
    nodes: Annotated[int, typer.Option(min=1, max=500, help="Demo nodes to enroll.")] = 4,
    exit_after_demo: Annotated[
        bool, typer.Option(help="Stop once the demo instance is ACTIVE (for scripts and tests).")
    ] = False,
) -> None:
    """Run the API, scheduler, a conductor and netctl in this process.

    No RabbitMQ or PostgreSQL needed: the services talk over the in-memory transport and
    keep their state in SQLite under --state-dir. Hardware is fake (simulated power, PXE
    and deploy ramdisk). With --demo it enrolls demo nodes and creates an instance over the
    REST API, showing its progress, then keeps serving until Ctrl-C.
    """
    # Imported here: the client commands (tetsu server ...) need not load every service.
    from .allinone import AllInOne  # noqa: PLC0415

    with startup_errors():
        state_dir.mkdir(parents=True, exist_ok=True)
        log_file = state_dir / "tetsu.log"
        setup_logging("all-in-one", CommonSettings().log_level, log_file=log_file)
        dump_stacks_on_signal()
        stack = AllInOne(state_dir, host=host, port=port)
        try:
            stack.start()
        except BaseException:
            stack.stop()
            raise
        freeze_startup_objects()
    try:
        token_file = state_dir / "admin-token"
        console.print(f"[bold]tetsu all-in-one[/]: API at {stack.endpoint} (OpenAPI at /docs)")
        console.print(f"logs in {log_file}; admin token in {token_file}", soft_wrap=True)
        console.print(
            f"  export TETSU_ENDPOINT={stack.endpoint} TETSU_TOKEN=$(cat {token_file})",
            soft_wrap=True,
            highlight=False,
        )
        if demo:
            try:
                seed_and_deploy(stack.endpoint, stack.token, nodes=nodes, console=console)
            except (DemoFailed, APIError) as exc:
                raise _fail(f"the demo failed: {exc} (details in {log_file})") from None
        if demo and exit_after_demo:
            return
        console.print("serving; Ctrl-C to stop")
        wait_for_signal()
    finally:
        stack.stop()


def demo_seed_command(
    ctx: typer.Context,
    nodes: Annotated[
        int, typer.Option(min=0, max=500, help="Demo nodes to enroll (0: enroll nothing).")
    ] = 4,
    timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds to wait for a conductor, then for the nodes."),
    ] = 300.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
) -> None:
    """Enroll demo nodes (fake hardware) and a flavor, an image and a network over the API.

    What `tetsu all-in-one --demo` sets up, for a stack whose services run apart (the
    compose file's `seed` step). Waits for a conductor, then until the nodes are
    available. Safe to run again: what exists already is kept.
    """
    if nodes == 0:  # how a compose stack for real machines turns its seed step off
        console.print("no demo nodes asked for (--nodes 0): nothing to do")
        return
    with connect(ctx, endpoint, token) as api:
        try:
            wait_for_conductors(api, console=console, timeout=timeout)
            seed(api, nodes=nodes, console=console, timeout=timeout)
        except DemoFailed as exc:
            raise fail(str(exc)) from None
    console.print(
        f"demo cloud ready: {nodes} nodes, flavor {FLAVOR}, image {IMAGE}, network {NETWORK}"
    )
