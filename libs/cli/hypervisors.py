"""``tetsu hypervisor``: the hosts whose conductors run VM nodes made on demand
(``/v1/hypervisors``, admin)."""

from __future__ import annotations

import typer

from .output import HYPERVISOR_COLUMNS
from .resource_commands import ResourceCommands

app = typer.Typer(
    help="Hypervisors (admin): hosts whose conductor runs with TETSU_HYPERVISOR=true; the "
    "scheduler makes a VM node on one, out of its free room, for each instance of its "
    "resource class that no enrolled node takes.",
    no_args_is_help=True,
)

commands = ResourceCommands(
    app, "hypervisor", lambda api: api.hypervisors, "Hypervisor id or name."
)
commands.add_list(
    HYPERVISOR_COLUMNS, "List hypervisors: their room, what their VMs hold, and what is free."
)
commands.add_show("Show a hypervisor.")
commands.add_delete("Forget a hypervisor that has no VM nodes left (admin).")
