"""The dispatcher: version compatibility, exposure rules and argument checking."""

from __future__ import annotations

import datetime as dt

import pytest

from libs import rpc
from libs.rpc.dispatcher import Dispatcher

CTX = rpc.RequestContext()


class V1:
    RPC_API_VERSION = "1.2"

    @rpc.expose
    def power(self, ctxt: rpc.RequestContext, node: str, on: bool = True) -> str:
        return f"v1:{node}:{on}"

    @rpc.expose
    def when(self, ctxt: rpc.RequestContext, at: dt.datetime) -> dt.datetime:
        return at


class V2:
    RPC_API_VERSION = "2.0"

    @rpc.expose
    def power(self, ctxt: rpc.RequestContext, node: str, state: str) -> str:
        return f"v2:{node}:{state}"


@pytest.mark.parametrize(
    ("available", "requested", "compatible"),
    [
        ("1.2", "1.0", True),
        ("1.2", "1.2", True),
        ("1.2", "1.3", False),
        ("2.0", "1.0", False),
        ("1.9", "2.0", False),
        ("1.10", "1.9", True),
    ],
)
def test_version_compatibility(available, requested, compatible):
    assert rpc.version_is_compatible(available, requested) is compatible


def test_the_endpoint_with_the_compatible_major_serves_the_call():
    dispatcher = Dispatcher([V1(), V2()])
    assert dispatcher.dispatch(CTX, "power", {"node": "n1"}, "1.1") == "v1:n1:True"
    assert dispatcher.dispatch(CTX, "power", {"node": "n1", "state": "off"}, "2.0") == "v2:n1:off"
    with pytest.raises(rpc.UnsupportedVersion, match=r"1\.2, 2\.0"):
        dispatcher.dispatch(CTX, "power", {"node": "n1"}, "3.0")


def test_arguments_are_converted_by_type_hint():
    at = Dispatcher([V1()]).dispatch(CTX, "when", {"at": "2026-11-27T10:00:00+00:00"}, "1.0")
    assert at == dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
    with pytest.raises(rpc.InvalidArguments, match="'at'"):
        Dispatcher([V1()]).dispatch(CTX, "when", {"at": "yesterday-ish"}, "1.0")


def test_an_endpoint_needs_a_version():
    class NoVersion:
        pass

    with pytest.raises(TypeError, match="RPC_API_VERSION"):
        Dispatcher([NoVersion()])
    with pytest.raises(ValueError, match=r"X\.Y"):
        Dispatcher([type("Bad", (), {"RPC_API_VERSION": "1"})()])


@pytest.mark.parametrize("method", ["", "1abc", "a-b", "__dict__", "power.__call__"])
def test_names_that_are_not_plain_public_identifiers_are_unknown(method):
    with pytest.raises(rpc.NoSuchMethod):
        Dispatcher([V1()]).dispatch(CTX, method, {}, "1.0")


def test_an_exposed_method_must_take_the_context_and_named_arguments():
    class Positional:
        RPC_API_VERSION = "1.0"

        @rpc.expose
        def odd(self, ctxt: rpc.RequestContext, *values: int) -> None:
            return None

    with pytest.raises(TypeError, match="by name"):
        Dispatcher([Positional()]).dispatch(CTX, "odd", {}, "1.0")
