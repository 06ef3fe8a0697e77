"""libs/notify: events of every state change and failure, stored and published.

The service that changes a node or an instance records an :class:`~libs.db.models.Event`
with a :class:`Notifier` in the same transaction, and the notifier publishes it on the
:class:`NotificationBus` (RabbitMQ's ``tetsu.notifications`` topic exchange, routing key
= the event type) once that commits. The API lists the stored events and streams the
published ones (``services/api/routes/events.py``). See docs/events.md.
"""

from .bus import (
    EXCHANGE,
    AMQPNotificationBus,
    MemoryNotificationBus,
    NotificationBus,
    Subscription,
    bus_for,
)
from .notifier import EventMessage, Notifier, event_params, project_of, with_events
from .payloads import (
    PAYLOAD_VERSION,
    ObjectType,
    Phase,
    event_type,
    instance_payload,
    node_payload,
    node_transition,
)
from .retention import sweep_events

__all__ = [
    "EXCHANGE",
    "PAYLOAD_VERSION",
    "AMQPNotificationBus",
    "EventMessage",
    "MemoryNotificationBus",
    "NotificationBus",
    "Notifier",
    "ObjectType",
    "Phase",
    "Subscription",
    "bus_for",
    "event_params",
    "event_type",
    "instance_payload",
    "node_payload",
    "node_transition",
    "project_of",
    "sweep_events",
    "with_events",
]
