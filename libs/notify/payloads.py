"""What an event says: the event type of each node transition, and the payloads of node
and instance events (the object's fields after the change, never credentials).

Event types are ``tetsu.<object>.<action>.<phase>``; docs/events.md lists them all.
"""

from __future__ import annotations

import enum
from typing import Any

from libs.db.models import Instance, Node

#: Bumped when a payload loses or changes a field (adding one keeps the version).
PAYLOAD_VERSION = "1.0"


class Phase(enum.StrEnum):
    START = "start"
    END = "end"
    ERROR = "error"


class ObjectType(enum.StrEnum):
    NODE = "node"
    INSTANCE = "instance"


def event_type(object_type: str, action: str, phase: Phase) -> str:
    return f"tetsu.{object_type}.{action}.{phase.value}"


#: (previous provision state, new one) -> (action, phase). Provision state names are
#: services/conductor/states.py's values.
_NODE_TRANSITIONS: dict[tuple[str, str], tuple[str, Phase]] = {
    ("available", "deploying"): ("deploy", Phase.START),
    ("active", "deploying"): ("rebuild", Phase.START),
    ("active", "error"): ("fence", Phase.END),
    ("deploy failed", "error"): ("fence", Phase.END),
    ("error", "error"): ("fence", Phase.END),
    ("deploying", "wait call-back"): ("deploy_ramdisk", Phase.START),
    ("wait call-back", "deploying"): ("deploy_ramdisk", Phase.END),
    ("deploying", "active"): ("deploy", Phase.END),
    ("deploying", "deploy failed"): ("deploy", Phase.ERROR),
    ("wait call-back", "deploy failed"): ("deploy", Phase.ERROR),
    ("active", "deleting"): ("tear_down", Phase.START),
    ("deploy failed", "deleting"): ("tear_down", Phase.START),
    ("error", "deleting"): ("tear_down", Phase.START),
    ("deleting", "error"): ("tear_down", Phase.ERROR),
    ("deleting", "cleaning"): ("clean", Phase.START),
    ("manageable", "cleaning"): ("clean", Phase.START),
    ("cleaning", "clean wait"): ("clean_ramdisk", Phase.START),
    ("clean wait", "cleaning"): ("clean_ramdisk", Phase.END),
    ("cleaning", "available"): ("clean", Phase.END),
    ("cleaning", "clean failed"): ("clean", Phase.ERROR),
    ("clean wait", "clean failed"): ("clean", Phase.ERROR),
}

#: Stable states a failure ends in: any other transition into one is an error.
_FAILED_STATES = frozenset({"deploy failed", "clean failed", "error"})


def node_transition(previous: str, new: str) -> tuple[str, Phase]:
    """The action and phase of a node's move from provision state ``previous`` to ``new``."""
    found = _NODE_TRANSITIONS.get((previous, new))
    if found is not None:
        return found
    if new == "manageable":
        return "manage", Phase.END
    return "provision", Phase.ERROR if new in _FAILED_STATES else Phase.END


def _value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def node_payload(node: Node, **extra: Any) -> dict[str, Any]:
    """The node's state after the change. driver_info (credentials) is never included;
    last_error is already scrubbed of them by its one writer (conductor steps)."""
    return {
        "payload_version": PAYLOAD_VERSION,
        "id": node.id,
        "name": node.name,
        "provision_state": node.provision_state,
        "target_provision_state": node.target_provision_state,
        "power_state": _value(node.power_state),
        "target_power_state": _value(node.target_power_state),
        "maintenance": node.maintenance,
        "maintenance_reason": node.maintenance_reason,
        "last_error": node.last_error,
        "instance_id": node.instance_id,
        **extra,
    }


def instance_payload(instance: Instance, **extra: Any) -> dict[str, Any]:
    """The instance's state after the change."""
    return {
        "payload_version": PAYLOAD_VERSION,
        "id": instance.id,
        "name": instance.name,
        "project_id": instance.project_id,
        "status": _value(instance.status),
        "task_state": _value(instance.task_state),
        "node_id": instance.node_id,
        "image_id": instance.image_id,
        "flavor_id": instance.flavor_id,
        "network_ids": list(instance.network_ids or []),
        "fault": instance.fault,
        "attempts": instance.attempts,
        **extra,
    }
