"""The exceptions of libs/rpc, and how a handler's exception crosses the wire.

Hierarchy::

    RPCError                      base of everything this library raises
    ├── Timeout                   a call got no reply in time
    ├── NoConsumer                nothing listens on the target: the call or cast was returned
    ├── TransportError            the broker could not be reached, or the connection died mid-call
    ├── SerializationError        an argument or result cannot be written as JSON
    ├── RemoteError               a handler raised an exception the caller does not allow
    └── RequestRefused            the server refused the message before running any handler
        ├── MalformedMessage      not JSON, not an object, no method, a bad context
        ├── NoSuchMethod          no endpoint exposes the method
        ├── UnsupportedVersion    endpoints expose it, none at a compatible version
        └── InvalidArguments      the arguments do not fit the method's signature

A handler's exception travels as ``{"type", "module", "message", "args", "kwargs",
"traceback"}``. The caller re-raises it as its own class only when that class is in the
client's allowlist (the library's own refusals are always allowed), rebuilt with
``cls(**exc.kwargs)`` when the exception keeps a JSON-safe ``kwargs`` dict (the convention
for tetsu's own errors), else with ``cls(*exc.args)``; anything else, or an exception that
cannot be rebuilt, becomes a :class:`RemoteError` keeping the remote type name and message.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterable
from typing import Any


class RPCError(Exception):
    """Base class of every exception raised by libs/rpc."""


class Timeout(RPCError):
    """A call received no reply within its timeout."""


class NoConsumer(RPCError):
    """The broker returned the message: no server listens on that target."""


class TransportError(RPCError):
    """The broker could not be reached in time, or the connection died during a call."""


class SerializationError(RPCError, TypeError):
    """A value cannot be serialised to JSON by the library's serializer."""


class RequestRefused(RPCError):
    """The server refused a message before any handler ran (it is rejected, not retried)."""


class MalformedMessage(RequestRefused):
    """The message is not a valid envelope."""


class NoSuchMethod(RequestRefused):
    """No endpoint of the server exposes the requested method."""


class UnsupportedVersion(RequestRefused):
    """Endpoints expose the method, but none at a version compatible with the request."""


class InvalidArguments(RequestRefused):
    """The arguments do not match the method's signature or its type hints."""


class RemoteError(RPCError):
    """A handler raised an exception whose type the caller does not allow.

    ``exc_type`` is the remote ``module.QualName``; ``remote_traceback`` is only sent when the
    server runs in debug mode.
    """

    def __init__(self, exc_type: str, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = remote_traceback


#: The refusals and errors every client may re-raise as themselves.
BUILTIN_ERRORS: tuple[type[Exception], ...] = (
    MalformedMessage,
    NoSuchMethod,
    UnsupportedVersion,
    InvalidArguments,
    SerializationError,
)


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def serialize_failure(exc: BaseException, *, with_traceback: bool) -> dict[str, Any]:
    """Describe an exception for the wire (its args only when they are plain JSON)."""
    tb = None
    if with_traceback:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "args": _json_safe(list(exc.args)),
        "kwargs": _json_safe(kwargs)
        if isinstance(kwargs := getattr(exc, "kwargs", None), dict)
        else None,
        "traceback": tb,
    }


class ErrorRegistry:
    """The allowlist a client uses to turn a remote failure back into an exception."""

    def __init__(self, allowed: Iterable[type[Exception]] = ()) -> None:
        self._by_name: dict[str, type[Exception]] = {}
        for cls in (*BUILTIN_ERRORS, *allowed):
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise TypeError(f"{cls!r} is not an exception class")
            self._by_name[qualified_name(cls)] = cls

    def rebuild(self, failure: dict[str, Any]) -> Exception:
        """The exception to raise at the caller for a failure received from a server."""
        name = f"{failure.get('module')}.{failure.get('type')}"
        message = str(failure.get("message", ""))
        remote_tb = failure.get("traceback")
        cls = self._by_name.get(name)
        if cls is not None:
            args, kwargs = failure.get("args"), failure.get("kwargs")
            try:
                if isinstance(kwargs, dict):
                    exc = cls(**kwargs)
                elif isinstance(args, list):
                    exc = cls(*args)
                else:
                    exc = cls(message)
            except Exception:
                exc = RemoteError(name, message, remote_tb)
            else:
                if remote_tb:
                    exc.add_note(f"Remote traceback:\n{remote_tb}")
            return exc
        return RemoteError(name, message, remote_tb)
