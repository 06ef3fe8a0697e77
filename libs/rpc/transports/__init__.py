"""Transports: RabbitMQ over kombu, and in-process memory; ``transport_from_url`` picks one."""

from __future__ import annotations

from typing import Any

from .amqp import AMQPTransport, safe_url
from .base import Incoming, Listener, Transport
from .memory import MemoryTransport


def transport_from_url(url: str, **options: Any) -> Transport:
    """``memory://`` gives a new in-process transport; ``amqp://...`` RabbitMQ."""
    if url.startswith("memory:"):
        return MemoryTransport()
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return AMQPTransport(url, **options)
    raise ValueError("transport URL must start with amqp:// or memory://")


__all__ = [
    "AMQPTransport",
    "Incoming",
    "Listener",
    "MemoryTransport",
    "Transport",
    "safe_url",
    "transport_from_url",
]
