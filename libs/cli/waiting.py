"""Waiting for a server or a node to settle (``--wait``), with a live display of its state.

The spinner line shows the current state and the time spent; each change of state is
also printed as a line of its own, so the history stays readable after the wait.
Everything goes to stderr: stdout is kept for the final result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from .client import APIClient, APIError, Resource
from .session import Runtime

T = TypeVar("T")

#: Node provision states that mean the work failed (services/conductor/states.py).
NODE_FAILED_STATES = frozenset({"deploy failed", "clean failed", "error"})


class WaitTimedOut(Exception):
    """The deadline passed before the thing settled; ``last`` is how it looked then."""

    def __init__(self, last: str) -> None:
        super().__init__(last)
        self.last = last


def poll(
    fetch: Callable[[], T],
    describe: Callable[[T], str],
    settled: Callable[[T], bool],
    *,
    what: str,
    timeout: float,
    interval: float,
    runtime: Runtime,
    console: Console,
    first: T | None = None,
) -> T:
    """Call ``fetch`` every ``interval`` seconds until ``settled`` says yes; return that.
    ``first`` is what is already known (e.g. the answer to the create), shown before
    the first call.

    A moment when the API is unreachable or overloaded is shown and waited out; any
    other APIError ends the wait.
    """
    started = runtime.clock()
    deadline = started + timeout
    last_line = ""
    with Live(console=console, transient=True, refresh_per_second=8) as live:
        while True:
            try:
                current = fetch() if first is None else first
                first = None
            except APIError as exc:
                if not exc.retriable:
                    raise
                line = f"API unavailable, retrying: {exc.reason}"
                current_settled = False
            else:
                line = describe(current)
                current_settled = settled(current)
            now = runtime.clock()
            if line != last_line:
                live.console.print(Text(f"{now - started:7.1f}s  {what}: {line}"))
                last_line = line
            if current_settled:
                return current
            if now >= deadline:
                raise WaitTimedOut(last_line)
            live.update(Spinner("dots", Text(f"{what}: {line} ({now - started:.0f}s)")))
            runtime.sleep(min(interval, deadline - now))


@dataclass(frozen=True)
class ServerProgress:
    """An instance as last seen, and the provision state of its node (admins only)."""

    instance: Resource
    node_state: str | None


class ServerWatcher:
    """Fetches an instance and, when the token may see nodes, the node deploying it."""

    def __init__(self, api: APIClient, instance_id: str) -> None:
        self.api = api
        self.instance_id = instance_id
        self._nodes_visible = True  # until the API says this user may not see nodes

    def fetch(self) -> ServerProgress:
        try:
            instance = self.api.instances.get(self.instance_id)
        except APIError as exc:
            if exc.status != 404:
                raise
            # Deleted instances leave the default view: gone is what a delete waits for.
            return ServerProgress({"id": self.instance_id, "status": "DELETED"}, None)
        return ServerProgress(instance, self._node_state(instance.get("node_id")))

    def _node_state(self, node_id: Any) -> str | None:
        if not node_id or not self._nodes_visible:
            return None
        try:
            state = self.api.nodes.get(str(node_id)).get("provision_state")
        except APIError as exc:
            if exc.status in {401, 403}:
                self._nodes_visible = False
                return None
            if exc.status == 404:  # the node went away between the two requests
                return None
            raise
        return str(state) if state is not None else None


def describe_server(progress: ServerProgress) -> str:
    instance = progress.instance
    parts = [str(instance.get("status"))]
    if instance.get("task_state"):
        parts.append(f"task {instance['task_state']}")
    if progress.node_state:
        parts.append(f"node {progress.node_state}")
    return ", ".join(parts)


def describe_node(node: Resource) -> str:
    text = f"{node.get('provision_state')}"
    if node.get("target_provision_state"):
        text += f" -> {node['target_provision_state']}"
    if node.get("last_error"):
        text += f" (last error: {node['last_error']})"
    return text
