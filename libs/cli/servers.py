"""``tetsu server``: instances on bare-metal nodes (``/v1/instances``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .client import APIClient, APIError, Resource
from .output import (
    SERVER_COLUMNS,
    OutputFormat,
    print_list,
    print_note,
    print_resource,
    stderr_console,
)
from .resource_commands import ResourceCommands
from .session import (
    EXIT_FAILED,
    EXIT_TIMED_OUT,
    EndpointOption,
    FormatOption,
    PollOption,
    TimeoutOption,
    TokenOption,
    connect,
    fail,
    runtime,
)
from .waiting import ServerProgress, ServerWatcher, WaitTimedOut, describe_server, poll

app = typer.Typer(
    help="Servers: instances of an image on a whole physical machine, in your project.",
    no_args_is_help=True,
)

SERVER_HELP = "Server id, or its name when unique."
ServerArg = Annotated[str, typer.Argument(help=SERVER_HELP)]
commands = ResourceCommands(app, "server", lambda api: api.instances, SERVER_HELP)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new server.")],
    flavor: Annotated[str, typer.Option(help="Flavor id or name: what kind of machine.")],
    image: Annotated[str, typer.Option(help="Image id or name to write on its disk.")],
    network: Annotated[
        list[str] | None,
        typer.Option(
            help="Network id or name; repeat for more. The node's first port joins the "
            "first network, its second port the second..."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Show the deploy's progress until the server is ACTIVE.")
    ] = False,
    timeout: TimeoutOption = 1800.0,
    poll_interval: PollOption = 2.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a server: the scheduler picks a free node that fits the flavor and the
    conductor deploys the image on it.

    With --wait, exit status 0 when the server is ACTIVE, 1 when it failed (the fault is
    printed), 2 when --timeout passed first (the deploy goes on).
    """
    with connect(ctx, endpoint, token) as api:
        body: Resource = {"name": name, "flavor": flavor, "image": image}
        if network:
            body["networks"] = [api.networks.find(each)["id"] for each in network]
        instance = api.instances.create(body)
        if wait:
            instance = _wait(ctx, api, instance, "ACTIVE", timeout, poll_interval)
    _show_outcome(instance, fmt)


@app.command("list")
def list_servers(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="Only servers in this status (BUILD, ACTIVE, ERROR, DELETED...)."),
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="Admins: only this project's servers (id or name).")
    ] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List your project's servers (an admin sees every project's). Deleted servers only
    show with --status DELETED."""
    with connect(ctx, endpoint, token) as api:
        project_id = api.projects.find(project)["id"] if project else None
        status = status.upper() if status else None
        servers = api.instances.list(status=status, project_id=project_id)
    print_list(servers, SERVER_COLUMNS, fmt)


@app.command("show")
def show(
    ctx: typer.Context,
    server: ServerArg,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show a server: status, task, node, fault, and the networks it is in, by name."""
    with connect(ctx, endpoint, token) as api:
        instance = api.instances.find(server)
        networks = [_network_label(api, each) for each in instance.get("network_ids") or []]
    if fmt is OutputFormat.JSON:
        print_resource(instance, fmt)  # the API's object, unchanged, for scripts
    else:
        print_resource({**instance, "networks": networks}, fmt)


def _network_label(api: APIClient, network_id: str) -> str:
    """``name (id)``, or the bare id of a network the user can no longer see."""
    try:
        return f"{api.networks.get(network_id)['name']} ({network_id})"
    except APIError as exc:
        if exc.status != 404:
            raise
        return network_id


@app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    server: ServerArg,
    image: Annotated[
        str | None,
        typer.Option(help="Image id or name to write instead (default: the server's own)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Show the rebuild's progress until the server is ACTIVE.")
    ] = False,
    timeout: TimeoutOption = 1800.0,
    poll_interval: PollOption = 2.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Rebuild a server in place: the same node, name and networks, its disk written
    again with its image or --image (everything on the disk is lost).

    With --wait, exit status 0 when the server is ACTIVE again, 1 when the rebuild failed
    (the fault is printed), 2 when --timeout passed first.
    """
    with connect(ctx, endpoint, token) as api:
        instance = api.instances.find(server)
        body: Resource = {"image": api.images.find(image)["id"]} if image else {}
        instance = api.instances.action(instance["id"], "rebuild", body)
        if wait:
            instance = _wait(ctx, api, instance, "ACTIVE", timeout, poll_interval)
    _show_outcome(instance, fmt)


@app.command("evacuate")
def evacuate(
    ctx: typer.Context,
    server: ServerArg,
    wait: Annotated[
        bool, typer.Option(help="Show the progress until the server is ACTIVE on its new node.")
    ] = False,
    timeout: TimeoutOption = 1800.0,
    poll_interval: PollOption = 2.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Admins: bring a server whose node died back on another node, with the same id, name,
    image and networks (its disk's data is not carried over). The old node must be in
    maintenance or no longer answer its BMC; it is fenced: powered off if it answers, and
    cut off from every network.

    With --wait, exit status 0 when the server is ACTIVE again, 1 when it failed, 2 when
    --timeout passed first.
    """
    with connect(ctx, endpoint, token) as api:
        instance = api.instances.find(server)
        instance = api.instances.action(instance["id"], "evacuate", {})
        if wait:
            instance = _wait(ctx, api, instance, "ACTIVE", timeout, poll_interval)
    _show_outcome(instance, fmt)


@app.command("delete")
def delete(
    ctx: typer.Context,
    server: ServerArg,
    wait: Annotated[
        bool, typer.Option(help="Wait until the node is cleaned and the server DELETED.")
    ] = False,
    timeout: TimeoutOption = 1800.0,
    poll_interval: PollOption = 2.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a server: its node is powered off, its disk wiped, and it goes back to the
    pool of available nodes."""
    with connect(ctx, endpoint, token) as api:
        instance = api.instances.find(server)
        answer = api.instances.delete(instance["id"])
        if not wait:
            print_note(f"deleting server {instance['name']} ({instance['id']})")
            return
        instance = _wait(
            ctx, api, {**instance, **(answer or {})}, "DELETED", timeout, poll_interval
        )
    if instance.get("status") == "ERROR":
        raise _failed(instance)
    print_note(f"deleted server {instance.get('name', server)} ({instance['id']})")


def _show_outcome(instance: Resource, fmt: OutputFormat) -> None:
    """Print the server; a server in ERROR makes the command fail with its fault."""
    print_resource(instance, fmt)
    if instance.get("status") == "ERROR":
        raise _failed(instance)


def _wait(
    ctx: typer.Context,
    api: APIClient,
    instance: Resource,
    goal: str,
    timeout: float,
    interval: float,
) -> Resource:
    """The instance once it reached ``goal`` or ERROR; exit status 2 at the timeout."""
    watcher = ServerWatcher(api, instance["id"])

    def settled(progress: ServerProgress) -> bool:
        # An evacuation starts with the server still ACTIVE, busy with its task.
        shown = progress.instance
        status = shown.get("status")
        return status == "ERROR" or (status == goal and shown.get("task_state") is None)

    try:
        progress = poll(
            watcher.fetch,
            describe_server,
            settled,
            what=f"server {instance.get('name', instance['id'])}",
            timeout=timeout,
            interval=interval,
            runtime=runtime(ctx),
            console=stderr_console(),
            first=ServerProgress(instance, None),
        )
    except WaitTimedOut as exc:
        raise fail(
            f"server {instance['id']} is not {goal} after {timeout:g} s "
            f"(still {exc.last}); see `tetsu server show {instance['id']}`",
            EXIT_TIMED_OUT,
        ) from None
    return {**instance, **progress.instance}


def _failed(instance: Resource) -> typer.Exit:
    fault = instance.get("fault") or {}
    message = fault.get("message") or "no reason given"
    code = fault.get("code") or "unknown"
    return fail(
        f"server {instance.get('name', '')} ({instance['id']}) failed: {message} ({code})",
        EXIT_FAILED,
    )
