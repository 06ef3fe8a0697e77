"""How the CLI prints resources: a rich table for people, or JSON for scripts (``--format``).

Each resource has one set of list columns, so ``tetsu node list`` always reads the same;
``show`` prints every field the API returned, JSON prints the API's objects unchanged.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

Resource = dict[str, Any]

#: Wide enough that a table piped into grep or a file is never wrapped or cut.
PIPE_WIDTH = 10_000


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Resource], Any]


def column(key: str, header: str | None = None) -> Column:
    """The column showing ``item[key]``; ``a.b`` reaches into nested objects."""
    parts = key.split(".")

    def value(item: Resource) -> Any:
        current: Any = item
        for part in parts:
            current = current.get(part) if isinstance(current, dict) else None
        return current

    return Column(header or parts[-1].replace("_", " "), value)


def _visibility(image: Resource) -> Any:
    # Public images have no project; older answers may not spell the visibility out.
    if "visibility" in image:
        return image["visibility"]
    return "public" if image.get("project_id") is None else "private"


PROJECT_COLUMNS = (column("id"), column("name"), column("description"))
USER_COLUMNS = (column("id"), column("name"), column("project_id", "project"), column("role"))
FLAVOR_COLUMNS = (
    column("id"),
    column("name"),
    column("resource_class", "resource class"),
    column("cpus"),
    column("memory_mb", "memory MB"),
    column("disk_gb", "disk GB"),
)
IMAGE_COLUMNS = (
    column("id"),
    column("name"),
    column("status"),
    column("disk_format", "format"),
    column("size"),
    Column("visibility", _visibility),
)
NETWORK_COLUMNS = (
    column("id"),
    column("name"),
    column("segmentation_id", "segmentation id"),
    column("project_id", "project"),
)
NODE_COLUMNS = (
    column("id"),
    column("name"),
    column("provision_state", "provision state"),
    column("power_state", "power"),
    column("resource_class", "resource class"),
    column("maintenance"),
    column("instance_id", "instance"),
)
HYPERVISOR_COLUMNS = (
    column("name"),
    column("conductor"),
    column("alive"),
    column("resource_class", "resource class"),
    column("vm_nodes", "VMs"),
    column("free.vcpus", "free vCPUs"),
    column("free.memory_mb", "free MiB"),
    column("free.disk_gb", "free GiB"),
    column("capacity.vcpus", "vCPUs"),
    column("capacity.memory_mb", "MiB"),
    column("capacity.disk_gb", "GiB"),
)
PORT_COLUMNS = (
    column("id"),
    column("address"),
    column("node_id", "node"),
    column("binding"),
    column("network_id", "network"),
    column("switch_id", "switch"),
    column("switch_port", "switch port"),
)
SERVER_COLUMNS = (
    column("id"),
    column("name"),
    column("status"),
    column("task_state", "task"),
    column("node_id", "node"),
    column("created_at", "created"),
)


def cell(value: Any) -> str:
    """A value as table text: nothing for None, ``a=1, b=2`` for objects."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ", ".join(f"{key}={cell(inner)}" for key, inner in value.items())
    if isinstance(value, list):
        return ", ".join(cell(inner) for inner in value)
    return str(value)


def stdout_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def stderr_console() -> Console:
    """Progress and waiting displays: stdout stays clean for the result (and for JSON)."""
    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_list(items: Iterable[Resource], columns: Sequence[Column], fmt: OutputFormat) -> None:
    """Items as a table with ``columns``, or as a JSON array of the whole objects."""
    items = list(items)
    if fmt is OutputFormat.JSON:
        print_json(items)
        return
    table = Table()
    for col in columns:
        table.add_column(col.header)
    for item in items:
        # Text, not str: a name like "[red]" is data, not rich markup.
        table.add_row(*(Text(cell(col.value(item))) for col in columns))
    stdout_console().print(table)


def print_resource(item: Resource, fmt: OutputFormat) -> None:
    """One object, field by field, or as JSON."""
    if fmt is OutputFormat.JSON:
        print_json(item)
        return
    table = Table("field", "value")
    for key, value in item.items():
        table.add_row(Text(key), Text(cell(value)))
    stdout_console().print(table)


def print_error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def print_step(message: str) -> None:
    """Progress of a command of several steps, on stderr (stdout is for the result)."""
    typer.echo(message, err=True)


def print_note(message: str) -> None:
    """A short confirmation for the user (``deleted node n1``)."""
    typer.echo(message)
