"""The message format on the wire.

A request body is a JSON object::

    {"rpc": 1, "msg_id": "<hex>", "method": "deploy_node", "version": "1.2",
     "args": {"node_id": "..."}, "context": {"request_id": "req-...", "project_id": ...,
     "user_id": ..., "roles": [...]}}

A reply body is ``{"rpc": 1, "msg_id": ..., "result": <json>}`` or
``{"rpc": 1, "msg_id": ..., "failure": {"type", "module", "message", "args", "traceback"}}``.

The reply address is transport business: over AMQP it is the ``reply_to`` property (RabbitMQ
direct reply-to) with ``correlation_id`` = ``msg_id``; the memory transport keeps it beside the
message. Both are set by the transport when the message is a call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import serializer
from .context import RequestContext
from .errors import MalformedMessage
from .target import parse_version

PROTOCOL = 1


def new_msg_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request, ready for the dispatcher."""

    msg_id: str
    method: str
    version: str
    args: dict[str, Any]
    context: RequestContext


def encode_request(
    ctxt: RequestContext, method: str, args: dict[str, Any], version: str, msg_id: str
) -> bytes:
    return serializer.dumps(
        {
            "rpc": PROTOCOL,
            "msg_id": msg_id,
            "method": method,
            "version": version,
            "args": args,
            "context": ctxt,
        }
    )


#: The longest method name or msg_id a request may carry. Real ones are far shorter; a
#: refusal quotes them in the log and in its reply, which must stay small.
MAX_NAME_LENGTH = 255
#: The longest version string: "X.Y" with numbers no service will ever reach.
MAX_VERSION_LENGTH = 21


def _load_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = serializer.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        # Deeply nested arrays or objects ("[[[[..."): the parser's recursion limit.
        raise MalformedMessage(f"{what} nests too deeply to be a message") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"{what} is not a JSON object")
    return data


def decode_request(body: bytes) -> Request:
    """Parse a request body, or raise :class:`MalformedMessage` saying what is wrong."""
    data = _load_object(body, "body")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise MalformedMessage("no method named")
    if len(method) > MAX_NAME_LENGTH:
        raise MalformedMessage(f"the method name is longer than {MAX_NAME_LENGTH} characters")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise MalformedMessage("args is not an object")
    version = data.get("version", "1.0")
    if not isinstance(version, str) or len(version) > MAX_VERSION_LENGTH:
        raise MalformedMessage("the version is not a string like 'X.Y'")
    try:
        parse_version(version)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    try:
        context = RequestContext.model_validate(data.get("context") or {})
    except ValidationError as exc:
        raise MalformedMessage(f"bad context: {exc.error_count()} error(s)") from None
    return Request(
        msg_id=_msg_id_of(data),
        method=method,
        version=version,
        args=args,
        context=context,
    )


def peek_msg_id(body: bytes) -> str | None:
    """The msg_id of a body that may be malformed, for logging a refusal."""
    try:
        data = serializer.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return (_msg_id_of(data) or None) if isinstance(data, dict) else None


def _msg_id_of(data: dict[str, Any]) -> str:
    msg_id = data.get("msg_id")
    return msg_id if isinstance(msg_id, str) and len(msg_id) <= MAX_NAME_LENGTH else ""


def encode_result(msg_id: str, result: Any) -> bytes:
    return serializer.dumps({"rpc": PROTOCOL, "msg_id": msg_id, "result": result})


def encode_failure(msg_id: str, failure: dict[str, Any]) -> bytes:
    return serializer.dumps({"rpc": PROTOCOL, "msg_id": msg_id, "failure": failure})


@dataclass(frozen=True, slots=True)
class Reply:
    msg_id: str
    result: Any = None
    failure: dict[str, Any] | None = None


def decode_reply(body: bytes) -> Reply:
    data = _load_object(body, "reply")
    failure = data.get("failure")
    if failure is not None and not isinstance(failure, dict):
        raise MalformedMessage("reply failure is not an object")
    return Reply(msg_id=str(data.get("msg_id", "")), result=data.get("result"), failure=failure)
