"""``tetsu node``: the physical machines tetsu manages (``/v1/nodes``, admin)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from .client import APIClient, APIError, Resource
from .output import (
    NODE_COLUMNS,
    OutputFormat,
    print_list,
    print_note,
    print_resource,
    print_step,
    stderr_console,
)
from .ports import mac_addresses
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
    parse_pairs,
    runtime,
)
from .waiting import NODE_FAILED_STATES, WaitTimedOut, describe_node, poll

app = typer.Typer(
    help="Nodes (admin): enroll physical machines, power them, and move them through "
    "their provisioning states (enroll -> manageable -> available -> active).",
    no_args_is_help=True,
)

NODE_HELP = "Node id or name."
NodeArg = Annotated[str, typer.Argument(help=NODE_HELP)]
commands = ResourceCommands(app, "node", lambda api: api.nodes, NODE_HELP)
WaitOption = Annotated[
    bool, typer.Option(help="Wait until the node reaches the state asked for, showing progress.")
]


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"
    REBOOT = "reboot"


#: What the API calls each power action.
POWER_TARGETS = {
    PowerAction.ON: "power on",
    PowerAction.OFF: "power off",
    PowerAction.REBOOT: "reboot",
}


class Switch(enum.StrEnum):
    ON = "on"
    OFF = "off"


@app.command("enroll")
def enroll(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name of the node.")],
    resource_class: Annotated[
        str, typer.Option(help="Kind of machine; flavors ask for one (e.g. baremetal.small).")
    ],
    cpus: Annotated[int, typer.Option(min=0, help="CPU count.")],
    memory_mb: Annotated[int, typer.Option(min=0, help="Memory in MiB.")],
    disk_gb: Annotated[int, typer.Option(min=0, help="Size of the root disk in GiB.")],
    power_interface: Annotated[
        str | None, typer.Option(help="Power interface, by driver name (e.g. ipmi); default fake.")
    ] = None,
    boot_interface: Annotated[
        str | None, typer.Option(help="Boot interface (e.g. pxe); default fake.")
    ] = None,
    deploy_interface: Annotated[
        str | None, typer.Option(help="Deploy interface; default fake.")
    ] = None,
    management_interface: Annotated[
        str | None, typer.Option(help="Management interface (e.g. ipmi); default fake.")
    ] = None,
    driver_info: Annotated[
        list[str] | None,
        typer.Option(
            help="key=value for the drivers (ipmi_address=10.0.0.5, ipmi_password=...); "
            "repeat for more. Values are JSON when they parse as JSON (623, true), else text."
        ),
    ] = None,
    port: Annotated[
        list[str] | None,
        typer.Option(
            help="MAC address of a network interface; repeat for more.", callback=mac_addresses
        ),
    ] = None,
    provide: Annotated[
        bool,
        typer.Option(
            help="Then manage the node (checks its drivers) and provide it (cleans it and "
            "offers it to the scheduler)."
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="With --provide: wait until the node is available.")
    ] = False,
    timeout: TimeoutOption = 1800.0,
    poll_interval: PollOption = 2.0,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Enroll a machine: record the node and its ports; with --provide, take it all the
    way to available.

    If a port cannot be created the node is removed again, so the command can be rerun.
    """
    if wait and not provide:
        raise typer.BadParameter("--wait needs --provide", param_hint="--wait")
    body: Resource = {
        "name": name,
        "resource_class": resource_class,
        "properties": {"cpus": cpus, "memory_mb": memory_mb, "disk_gb": disk_gb},
        "driver_info": parse_pairs(driver_info, "--driver-info"),
    }
    interfaces = {
        "power_interface": power_interface,
        "boot_interface": boot_interface,
        "deploy_interface": deploy_interface,
        "management_interface": management_interface,
    }
    body.update({key: value for key, value in interfaces.items() if value is not None})
    with connect(ctx, endpoint, token) as api:
        node = api.nodes.create(body)
        print_step(f"enrolled node {name} ({node['id']})")
        _create_ports(api, node, port or [])
        if provide:
            api.nodes.set_provision_state(node["id"], "manage")
            # provide is refused until the node is manageable: this wait is not optional.
            node = _wait_for_state(ctx, api, node, timeout, poll_interval, goal="manageable")
            api.nodes.set_provision_state(node["id"], "provide")
            if wait:
                node = _wait_for_state(ctx, api, node, timeout, poll_interval, goal="available")
            else:
                node = api.nodes.get(node["id"])
    print_resource(node, fmt)


def _create_ports(api: APIClient, node: Resource, addresses: list[str]) -> None:
    created: list[Resource] = []
    try:
        for address in addresses:
            created.append(api.ports.create({"address": address, "node_id": node["id"]}))
            print_step(f"created port {address}")
    except APIError:
        _remove(api, node, created)
        raise


def _remove(api: APIClient, node: Resource, ports: list[Resource]) -> None:
    """Undo a half-done enrollment; say so when even that fails."""
    try:
        for port in ports:
            api.ports.delete(port["id"])
        api.nodes.delete(node["id"])
    except APIError as exc:
        print_step(f"could not remove the half-enrolled node {node['name']} ({node['id']}): {exc}")
    else:
        print_step(f"removed node {node['name']} again: its ports could not all be created")


@app.command("list")
def list_nodes(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only nodes in this provision state (e.g. available).")
    ] = None,
    resource_class: Annotated[
        str | None, typer.Option(help="Only nodes of this resource class.")
    ] = None,
    maintenance: Annotated[
        bool | None,
        typer.Option(
            "--maintenance/--no-maintenance",
            help="Only nodes in maintenance, or only nodes not in maintenance.",
            show_default=False,
        ),
    ] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List nodes with their provision and power states."""
    with connect(ctx, endpoint, token) as api:
        nodes = api.nodes.list(
            provision_state=state, resource_class=resource_class, maintenance=maintenance
        )
    print_list(nodes, NODE_COLUMNS, fmt)


commands.add_show("Show a node; passwords in its driver info are masked by the API.")


@app.command("power")
def power(
    ctx: typer.Context,
    node: NodeArg,
    action: Annotated[PowerAction, typer.Argument(help="on, off or reboot.")],
    endpoint: EndpointOption = None,
    token: TokenOption = None,
) -> None:
    """Power a node on or off, or reboot it (through its power driver, e.g. IPMI)."""
    with connect(ctx, endpoint, token) as api:
        found = api.nodes.get(node)
        api.nodes.set_power_state(found["id"], POWER_TARGETS[action])
    print_note(f"{POWER_TARGETS[action]} requested for node {found['name']}")


@app.command("maintenance")
def maintenance(
    ctx: typer.Context,
    node: NodeArg,
    switch: Annotated[Switch, typer.Argument(help="on or off.")],
    reason: Annotated[str | None, typer.Option(help="Why (shown with the node).")] = None,
    endpoint: EndpointOption = None,
    token: TokenOption = None,
) -> None:
    """Put a node in maintenance (the scheduler leaves it alone), or take it out."""
    if switch is Switch.OFF and reason is not None:
        raise typer.BadParameter("a reason goes with 'on' only", param_hint="--reason")
    on = switch is Switch.ON
    with connect(ctx, endpoint, token) as api:
        found = api.nodes.get(node)
        api.nodes.update(found["id"], {"maintenance": on, "maintenance_reason": reason})
    state = "in maintenance" if on else "out of maintenance"
    print_note(f"node {found['name']} is {state}" + (f": {reason}" if reason else ""))


def _add_provisioning_command(name: str, *, action: str, goal: str, help_text: str) -> None:
    """Add the command ``name``: it asks for the provisioning ``action`` (the API's name)
    and, with --wait, follows the node until it settles in ``goal``."""

    @app.command(name, help=help_text)
    def command(
        ctx: typer.Context,
        node: NodeArg,
        wait: WaitOption = False,
        timeout: TimeoutOption = 1800.0,
        poll_interval: PollOption = 2.0,
        endpoint: EndpointOption = None,
        token: TokenOption = None,
        fmt: FormatOption = OutputFormat.TABLE,
    ) -> None:
        with connect(ctx, endpoint, token) as api:
            found = api.nodes.get(node)
            api.nodes.set_provision_state(found["id"], action)
            if not wait:
                print_note(f"{action} requested for node {found['name']}")
                return
            found = _wait_for_state(ctx, api, found, timeout, poll_interval, goal=goal)
        print_resource(found, fmt)


_add_provisioning_command(
    "manage",
    action="manage",
    goal="manageable",
    help_text="Take a node under management: the conductor checks its drivers (manageable).\n\n"
    "With --wait, exit status 0 once the node is manageable, 1 if it failed, 2 when\n"
    "--timeout passed first.",
)
_add_provisioning_command(
    "provide",
    action="provide",
    goal="available",
    help_text="Clean a manageable node and offer it to the scheduler (available).\n\n"
    "With --wait, exit status 0 once the node is available, 1 if cleaning failed, 2 when\n"
    "--timeout passed first.",
)
_add_provisioning_command(
    "undeploy",
    action="delete",
    goal="available",
    help_text="Tear down what is deployed on a node (e.g. after a failed deploy); it is then\n"
    "cleaned and becomes available.\n\n"
    "With --wait, exit status 0 once the node is available, 1 if it failed, 2 when\n"
    "--timeout passed first.",
)
commands.add_delete(
    "Forget a node. Only a node in enroll, manageable or available, with no instance."
)


def _wait_for_state(
    ctx: typer.Context,
    api: APIClient,
    node: Resource,
    timeout: float,
    interval: float,
    *,
    goal: str,
) -> Resource:
    """The node once it settled in ``goal``; the command fails if it failed or timed out."""

    def settled(current: Resource) -> bool:
        state = current.get("provision_state")
        return (state == goal and not current.get("target_provision_state")) or (
            state in NODE_FAILED_STATES
        )

    try:
        current = poll(
            lambda: api.nodes.get(node["id"]),
            describe_node,
            settled,
            what=f"node {node['name']}",
            timeout=timeout,
            interval=interval,
            runtime=runtime(ctx),
            console=stderr_console(),
        )
    except WaitTimedOut as exc:
        raise fail(
            f"node {node['name']} is not {goal} after {timeout:g} s (still {exc.last})",
            EXIT_TIMED_OUT,
        ) from None
    if current.get("provision_state") != goal:
        raise fail(
            f"node {node['name']} is {current.get('provision_state')}, not {goal}: "
            f"{current.get('last_error') or 'no error recorded'}",
            EXIT_FAILED,
        )
    return current
