"""The caller's side: ``RPCClient.cast`` and ``RPCClient.call``.

A service's ``rpcapi.py`` wraps one client and turns each of its methods into a cast or a
call with the version that introduced it, so the wire format is written in one place.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

from libs import metrics

from .context import RequestContext
from .envelope import decode_reply, encode_request, new_msg_id
from .errors import ErrorRegistry, NoConsumer, Timeout, TransportError, UnsupportedVersion
from .target import Target, parse_version, version_is_compatible
from .transports.base import Transport

LOG = logging.getLogger(__name__)

_UNSET: Any = object()


class RPCClient:
    """Sends casts and calls to a :class:`Target` over a :class:`Transport`.

    ``allowed_errors`` lists the exception classes a call may re-raise as themselves when a
    handler raises them; others arrive as :class:`RemoteError`. ``version_cap`` pins the
    newest version this client may send (for rolling upgrades): sending above it raises
    :class:`UnsupportedVersion` locally, and :meth:`can_send_version` lets a client class
    fall back to an older form of a message.
    """

    def __init__(
        self,
        transport: Transport,
        target: Target,
        *,
        timeout: float = 60.0,
        allowed_errors: Iterable[type[Exception]] = (),
        version_cap: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if version_cap is not None:
            parse_version(version_cap)
        self.transport = transport
        self.target = target
        self.timeout = timeout
        self.version_cap = version_cap
        self._errors = (
            allowed_errors
            if isinstance(allowed_errors, ErrorRegistry)
            else ErrorRegistry(allowed_errors)
        )

    def prepare(
        self,
        *,
        server: str | None = _UNSET,
        version: str | None = None,
        timeout: float | None = None,
        fanout: bool | None = None,
    ) -> RPCClient:
        """A copy of this client aimed more narrowly (another server, version, timeout)."""
        changes: dict[str, Any] = {}
        if server is not _UNSET:
            changes["server"] = server
        if version is not None:
            changes["version"] = version
        if fanout is not None:
            changes["fanout"] = fanout
        client = copy.copy(self)
        client.target = dataclasses.replace(self.target, **changes)
        if timeout is not None:
            if timeout <= 0:
                raise ValueError("timeout must be positive")
            client.timeout = timeout
        return client

    def can_send_version(self, version: str) -> bool:
        return self.version_cap is None or version_is_compatible(self.version_cap, version)

    def _encode(
        self, ctxt: RequestContext, method: str, kwargs: dict[str, Any]
    ) -> tuple[str, bytes]:
        if not isinstance(ctxt, RequestContext):
            raise TypeError("the first argument of cast/call is a RequestContext")
        if not self.can_send_version(self.target.version):
            raise UnsupportedVersion(
                f"version {self.target.version} is above this client's cap {self.version_cap}"
            )
        msg_id = new_msg_id()
        return msg_id, encode_request(ctxt, method, kwargs, self.target.version, msg_id)

    def cast(self, ctxt: RequestContext, method: str, **kwargs: Any) -> None:
        """Send and return once the message is safely queued; no result, no error back."""
        msg_id, body = self._encode(ctxt, method, kwargs)
        LOG.debug("cast %s %s to %s [%s]", msg_id, method, self.target, ctxt.request_id)
        started = time.perf_counter()
        outcome = "error"
        try:
            self.transport.send(self.target, body, msg_id=msg_id)
            outcome = "ok"
        except Exception as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._measure("cast", method, outcome, started)

    def call(
        self, ctxt: RequestContext, method: str, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Send, wait for the handler's return value, and return it as plain JSON data.

        Raises the handler's exception (see ``allowed_errors``), :class:`Timeout`,
        :class:`NoConsumer` or :class:`TransportError`.
        """
        if self.target.fanout:
            raise ValueError("a fanout target takes casts only")
        timeout = self.timeout if timeout is None else timeout
        msg_id, body = self._encode(ctxt, method, kwargs)
        LOG.debug("call %s %s to %s [%s]", msg_id, method, self.target, ctxt.request_id)
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = decode_reply(
                self.transport.request(self.target, body, msg_id=msg_id, timeout=timeout)
            )
            outcome = "ok" if reply.failure is None else "error"
        except Exception as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._measure("call", method, outcome, started)
        if reply.failure is not None:
            raise self._errors.rebuild(reply.failure)
        return reply.result

    def _measure(self, kind: str, method: str, outcome: str, started: float) -> None:
        labels = ("client", kind, self.target.topic, method)
        metrics.RPC_CALLS.labels(*labels, outcome).inc()
        metrics.RPC_SECONDS.labels(*labels).observe(time.perf_counter() - started)


def _outcome(exc: BaseException) -> str:
    """The outcome label of a message that could not be sent or answered."""
    if isinstance(exc, Timeout):
        return "timeout"
    if isinstance(exc, NoConsumer):
        return "no_consumer"
    if isinstance(exc, TransportError):
        return "transport_error"
    return "error"
