"""The one serializer of libs/rpc: JSON, with explicit rules for richer Python values.

Sending (``dumps``) writes plain JSON. Values JSON lacks are converted as follows:

=========================  ==========================================
pydantic model             ``model.model_dump(mode="json")``
dataclass instance         ``dataclasses.asdict`` (then these rules)
datetime / date / time     ISO 8601 string (``isoformat()``)
timedelta                  seconds as a float
UUID, Decimal, Path        ``str(value)``
Enum                       its ``value``
set, frozenset, tuple      a list
bytes                      raises: encode binary data yourself (e.g. base64)
=========================  ==========================================

Anything else raises :class:`~libs.rpc.errors.SerializationError` before a message is sent.

Receiving is the mirror image done by the dispatcher: each argument is validated against the
handler's type hint with pydantic, so a handler annotated ``when: datetime`` or
``node: NodeModel`` gets those types back, and a value that does not fit is refused with
:class:`~libs.rpc.errors.InvalidArguments`. A call's result arrives as plain JSON; the
client class that knows its type validates it (``Model.model_validate(result)``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import pathlib
import uuid
from typing import Any

from pydantic import BaseModel

from .errors import SerializationError


def _default(value: Any) -> Any:  # noqa: PLR0911 - one return per rule
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | decimal.Decimal | pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise SerializationError(f"cannot serialise a {type(value).__name__} to JSON")


def dumps(value: Any) -> bytes:
    """Serialise ``value`` to UTF-8 JSON bytes following the rules above."""
    try:
        return json.dumps(
            value, default=_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except SerializationError:
        raise
    except (TypeError, ValueError) as exc:
        raise SerializationError(str(exc)) from exc


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes; a ``ValueError`` for anything that is not valid UTF-8 JSON."""
    return json.loads(data)
