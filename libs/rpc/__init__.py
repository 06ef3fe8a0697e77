"""libs/rpc: tetsu's messaging library. Casts and calls between services over RabbitMQ.

The caller builds ``{method, args, version}`` with an :class:`RPCClient`; the receiving
:class:`RPCServer` checks the version and calls ``getattr(endpoint, method)(ctxt, **args)``
on an endpoint whose method is marked with :func:`expose`. See ``docs/rpc.md``.
"""

from .client import RPCClient
from .context import RequestContext, current_context
from .dispatcher import Dispatcher, expose
from .errors import (
    InvalidArguments,
    MalformedMessage,
    NoConsumer,
    NoSuchMethod,
    RemoteError,
    RequestRefused,
    RPCError,
    SerializationError,
    Timeout,
    TransportError,
    UnsupportedVersion,
)
from .server import RPCServer
from .target import Target, version_is_compatible
from .transports import AMQPTransport, MemoryTransport, Transport, transport_from_url

__all__ = [
    "AMQPTransport",
    "Dispatcher",
    "InvalidArguments",
    "MalformedMessage",
    "MemoryTransport",
    "NoConsumer",
    "NoSuchMethod",
    "RPCClient",
    "RPCError",
    "RPCServer",
    "RemoteError",
    "RequestContext",
    "RequestRefused",
    "SerializationError",
    "Target",
    "Timeout",
    "Transport",
    "TransportError",
    "UnsupportedVersion",
    "current_context",
    "expose",
    "transport_from_url",
    "version_is_compatible",
]
