"""The all-in-one demo: waits that run out end as DemoFailed (one line from
`tetsu all-in-one --demo`), not as a traceback."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from rich.console import Console

from libs.cli.client import APIClient
from libs.cli.demo_cloud import NETWORK, DemoFailed, deploy, seed

from .fakeapi import ADMIN_TOKEN, PROVISION_STEPS, FakeAPI

MANAGED = PROVISION_STEPS["manage"]


def client(api: FakeAPI) -> APIClient:
    return APIClient("http://tetsu.test", ADMIN_TOKEN, transport=httpx.MockTransport(api.handler))


def quiet() -> Console:
    return Console(file=io.StringIO())


def conductor_at_work(api: FakeAPI, *, every_step: bool) -> None:
    """Let the fake conductor move the nodes on at each look at them: through every queued
    step, or one step a look."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.startswith("/v1/nodes"):
            for node in api.items["nodes"].values():
                while api.steps.get(node["id"]):
                    api._advance(node)
                    if not every_step:
                        break
        response: httpx.Response = api.handle(request)
        return response

    api.handler = handler


def test_nodes_that_never_become_available_fail_the_demo(api):
    # The fake API moves a node only when it is shown alone; the demo lists them.
    with client(api) as demo_api, pytest.raises(DemoFailed) as failed:
        seed(demo_api, nodes=1, console=quiet(), timeout=0.2)
    assert str(failed.value) == "the demo nodes are not available after 0.2 s (0 of 1 available)"


def test_a_server_that_never_becomes_active_fails_the_demo(api):
    api.add("networks", name=NETWORK)
    with client(api) as demo_api, pytest.raises(DemoFailed) as failed:
        deploy(demo_api, console=quiet(), timeout=0.2)
    assert str(failed.value) == (
        "demo-server is not ACTIVE after 0.2 s (still BUILD, task scheduling)"
    )


def test_a_node_that_keeps_failing_cleaning_is_retried_then_named(api):
    # Left "clean failed" by an earlier run (e.g. started before netctl listened).
    api.add(
        "nodes",
        name="demo-01",
        provision_state="clean failed",
        target_provision_state=None,
        last_error="moving ports failed: NoConsumer",
    )
    api.fail_clean = "moving ports failed: NoConsumer"
    # Each look at the node list finds the conductor done with every queued step.
    conductor_at_work(api, every_step=True)
    with client(api) as demo_api, pytest.raises(DemoFailed) as failed:
        seed(demo_api, nodes=1, console=quiet(), timeout=30)
    assert str(failed.value) == (
        "demo node demo-01 failed cleaning 4 times: moving ports failed: NoConsumer"
    )
    provides = [r for r in api.calls("PUT", "/v1/nodes/") if b"provide" in r.content]
    assert len(provides) == 4


def test_a_node_still_enrolling_after_manage_is_provided_once_manageable(api, monkeypatch):
    # The conductor manages in the background: the node shows "enroll" for a while after
    # the API accepted "manage" (the seed once looked only right after, and waited forever).
    monkeypatch.setitem(
        PROVISION_STEPS, "manage", [("enroll", "manageable"), ("enroll", "manageable"), *MANAGED]
    )

    # Each look at the node list (or at one node) finds the conductor one step further.
    conductor_at_work(api, every_step=False)
    with client(api) as demo_api:
        seed(demo_api, nodes=2, console=quiet(), timeout=30)
    assert [n["provision_state"] for n in api.items["nodes"].values()] == ["available"] * 2
    targets = [json.loads(r.content)["target"] for r in api.calls("PUT", "/v1/nodes/")]
    assert sorted(targets) == ["manage", "manage", "provide", "provide"]
