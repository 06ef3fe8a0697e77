"""Serializer, envelope, targets, contexts and how errors cross the wire."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

import pytest
from pydantic import BaseModel

from libs import rpc
from libs.rpc import envelope, serializer
from libs.rpc.errors import ErrorRegistry, serialize_failure


class Color(enum.Enum):
    RED = "red"


class Model(BaseModel):
    name: str
    at: dt.datetime


def test_serializer_writes_richer_values_as_documented():
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = serializer.loads(
        serializer.dumps(
            {
                "model": Model(name="n", at=at),
                "at": at,
                "id": ident,
                "color": Color.RED,
                "tags": {"a"},
                "pair": (1, 2),
                "price": decimal.Decimal("1.50"),
                "wait": dt.timedelta(seconds=90),
            }
        )
    )
    assert data == {
        "model": {"name": "n", "at": "2026-01-02T03:04:05Z"},
        "at": "2026-01-02T03:04:05+00:00",
        "id": str(ident),
        "color": "red",
        "tags": ["a"],
        "pair": [1, 2],
        "price": "1.50",
        "wait": 90.0,
    }


@pytest.mark.parametrize("value", [b"bytes", object(), float("nan")])
def test_serializer_refuses_what_it_cannot_write(value):
    with pytest.raises(rpc.SerializationError):
        serializer.dumps({"v": value})


def test_client_refuses_unserialisable_arguments_before_sending():
    client = rpc.RPCClient(rpc.MemoryTransport(), rpc.Target("t"))
    with pytest.raises(rpc.SerializationError):
        client.cast(rpc.RequestContext(), "m", blob=b"\x00")


def test_request_round_trip():
    ctxt = rpc.RequestContext(project_id="p", user_id="u", roles=("admin",))
    body = envelope.encode_request(ctxt, "deploy", {"node": "n1"}, "1.4", "abc")
    request = envelope.decode_request(body)
    assert (request.msg_id, request.method, request.version) == ("abc", "deploy", "1.4")
    assert request.args == {"node": "n1"}
    assert request.context == ctxt
    assert request.context.is_admin


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x01", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no method"),
        (b'{"method": "m", "args": []}', "args"),
        (b'{"method": "m", "version": "2"}', "X.Y"),
        (b'{"method": "m", "context": {"roles": 5}}', "context"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, reason):
    with pytest.raises(rpc.MalformedMessage, match=reason):
        envelope.decode_request(body)


def test_context_ignores_fields_from_a_newer_sender():
    ctxt = rpc.RequestContext.model_validate({"request_id": "r", "future_field": 1})
    assert ctxt.request_id == "r"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topic": ""},
        {"topic": "a b"},
        {"topic": "t", "server": "x@y"},
        {"topic": "t:call"},
        {"topic": "t", "version": "1"},
        {"topic": "t", "server": "s", "fanout": True},
    ],
)
def test_bad_targets_are_refused(kwargs):
    with pytest.raises(ValueError):
        rpc.Target(**kwargs)


class Busy(Exception):
    """An error in the kwargs convention: rebuilt from its keyword arguments."""

    def __init__(self, node: str, holder: str) -> None:
        self.kwargs = {"node": node, "holder": holder}
        super().__init__(f"{node} held by {holder}")
        self.node, self.holder = node, holder


class Plain(Exception):
    pass


def test_allowed_error_is_rebuilt_with_its_arguments():
    failure = serialize_failure(Busy("n1", "c2"), with_traceback=False)
    exc = ErrorRegistry([Busy]).rebuild(failure)
    assert isinstance(exc, Busy)
    assert (exc.node, exc.holder, str(exc)) == ("n1", "c2", "n1 held by c2")
    plain = ErrorRegistry([Plain]).rebuild(serialize_failure(Plain("a", 1), with_traceback=False))
    assert isinstance(plain, Plain)
    assert plain.args == ("a", 1)


def test_error_that_cannot_be_rebuilt_becomes_remote_error():
    class Odd(Exception):
        def __init__(self) -> None:
            super().__init__("always odd")

    failure = serialize_failure(Odd(), with_traceback=False)
    failure["args"] = ["unexpected"]
    exc = ErrorRegistry([Odd]).rebuild(failure)
    assert isinstance(exc, rpc.RemoteError)
    assert exc.message == "always odd"


def test_error_not_allowed_becomes_remote_error():
    failure = serialize_failure(Busy("n1", "c2"), with_traceback=False)
    exc = ErrorRegistry().rebuild(failure)
    assert isinstance(exc, rpc.RemoteError)
    assert exc.exc_type.endswith("test_wire.Busy")
    assert exc.message == "n1 held by c2"


def test_version_cap_stops_newer_messages_at_the_client():
    client = rpc.RPCClient(rpc.MemoryTransport(), rpc.Target("t", version="1.5"), version_cap="1.4")
    assert client.can_send_version("1.4") and not client.can_send_version("1.5")
    with pytest.raises(rpc.UnsupportedVersion, match="cap"):
        client.cast(rpc.RequestContext(), "m")
