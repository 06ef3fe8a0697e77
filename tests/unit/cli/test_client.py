"""APIClient: pagination, lookups by name, and every failure turned into an APIError."""

from __future__ import annotations

import socket

import httpx
import pytest

from libs.cli.client import APIClient, APIError

from .fakeapi import ADMIN_TOKEN, FakeAPI


def client_of(api: FakeAPI) -> APIClient:
    return APIClient("http://api:8000", ADMIN_TOKEN, transport=httpx.MockTransport(api.handler))


def test_list_follows_next_marker_through_every_page():
    api = FakeAPI(page_size=2)
    made = [api.add("flavors", name=f"f{n}") for n in range(5)]

    flavors = client_of(api).flavors.list()

    assert sorted(f["id"] for f in flavors) == sorted(f["id"] for f in made)
    markers = [r.url.params.get("marker") for r in api.requests]
    ids = sorted(f["id"] for f in made)
    assert markers == [None, ids[1], ids[3]]


def test_list_stops_when_a_server_repeats_its_marker():
    def same_page_forever(request):
        return httpx.Response(200, json={"flavors": [{"id": "a"}], "next_marker": "a"})

    client = APIClient("http://api", None, transport=httpx.MockTransport(same_page_forever))

    assert client.flavors.list() == [{"id": "a"}, {"id": "a"}]


def test_the_apis_error_body_becomes_an_api_error():
    api = FakeAPI()
    client = client_of(api)

    with pytest.raises(APIError) as raised:
        client.flavors.get("missing")

    error = raised.value
    assert (error.status, error.code) == (404, "not_found")
    assert error.reason == "flavor 'missing' not found"
    assert error.request_id == api.requests[0].headers["X-Request-ID"]
    assert str(error) == f"flavor 'missing' not found (not_found, {error.request_id})"


def test_an_answer_that_is_not_the_apis_still_becomes_an_api_error():
    def proxy(request):
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    client = APIClient("http://api", None, transport=httpx.MockTransport(proxy))

    with pytest.raises(APIError) as raised:
        client.nodes.list()

    assert (raised.value.status, raised.value.code) == (502, "http_502")
    assert raised.value.reason == "HTTP 502 Bad Gateway"
    assert raised.value.retriable


def test_a_body_that_cannot_be_decoded_becomes_an_api_error():
    def broken_proxy(request):
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    client = APIClient("http://api", None, transport=httpx.MockTransport(broken_proxy))

    with pytest.raises(APIError) as raised:
        client.nodes.list()

    assert (raised.value.status, raised.value.code) == (None, "transport_error")
    assert raised.value.reason.startswith("cannot talk to the tetsu API at http://api: ")


def test_a_closed_port_names_the_endpoint():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = APIClient(f"http://127.0.0.1:{port}", None, timeout=5)

    with pytest.raises(APIError) as raised:
        client.nodes.list()

    assert raised.value.code == "unreachable"
    assert raised.value.status is None
    assert f"cannot connect to the tetsu API at http://127.0.0.1:{port}" in raised.value.reason


def test_find_by_name_or_id():
    api = FakeAPI()
    blue = api.add("networks", name="blue")
    client = client_of(api)

    assert client.networks.find("blue") == blue
    assert client.networks.find(blue["id"]) == blue
    with pytest.raises(APIError) as raised:
        client.networks.find("red")
    assert raised.value.reason == "no network named 'red'"


def test_create_follows_the_location_of_an_answer_without_a_body():
    def accept(request):
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v1/instances/i-1"})
        return httpx.Response(200, json={"id": "i-1", "status": "BUILD"})

    client = APIClient("http://api", None, transport=httpx.MockTransport(accept))

    assert client.instances.create({"name": "x"}) == {"id": "i-1", "status": "BUILD"}


def test_names_are_quoted_in_paths():
    api = FakeAPI()
    api.add("nodes", name="rack 1?n#1")

    node = client_of(api).nodes.get("rack 1?n#1")

    assert node["name"] == "rack 1?n#1"
    assert api.requests[0].url.raw_path == b"/v1/nodes/rack%201%3Fn%231"


def test_an_endpoint_that_is_not_tetsu_is_said_so():
    def other_server(request):
        return httpx.Response(200, json={"hello": "world"})

    client = APIClient("http://elsewhere", None, transport=httpx.MockTransport(other_server))

    with pytest.raises(APIError) as raised:
        client.nodes.list()

    assert raised.value.code == "invalid_response"
    assert "is http://elsewhere the tetsu API?" in raised.value.reason


def locked_then(answers: list[httpx.Response]):
    """A transport giving ``answers`` in turn, and the requests it was sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        request.read()
        return answers.pop(0)

    return handler, seen


LOCKED = {"error": {"code": "node_locked", "reason": "node n1 is locked", "request_id": "r"}}


def test_a_request_refused_for_a_locked_node_is_sent_again_after_a_pause():
    handler, seen = locked_then(
        [httpx.Response(409, json=LOCKED), httpx.Response(202, json={"ok": True})]
    )
    slept: list[float] = []
    retried: list[tuple[str, float]] = []
    client = APIClient(
        "http://api",
        None,
        transport=httpx.MockTransport(handler),
        retry_interval=0.5,
        sleep=slept.append,
        on_retry=lambda error, seconds: retried.append((error.code, seconds)),
    )

    client.nodes.set_provision_state("00000000-0000-0000-0000-000000000001", "provide")

    assert [r.method for r in seen] == ["PUT", "PUT"]
    assert seen[0].content == seen[1].content == b'{"target":"provide"}'
    assert slept == [0.5]
    assert retried == [("node_locked", 0.5)]


def never_sleep(seconds: float) -> None:
    pytest.fail(f"slept {seconds} s before sending a streamed body again")


def test_a_streamed_body_is_not_sent_again():
    handler, seen = locked_then([httpx.Response(409, json=LOCKED)])
    client = APIClient(
        "http://api", None, transport=httpx.MockTransport(handler), sleep=never_sleep
    )

    with pytest.raises(APIError) as raised:
        client.request("PUT", "/v1/images/i1/file", content=iter([b"chunk"]))

    assert raised.value.code == "node_locked"
    assert len(seen) == 1
