"""The all-in-one demo: waits that run out end as DemoFailed (one line from
`tetsu all-in-one --demo`), not as a traceback."""

from __future__ import annotations

import io

import httpx
import pytest
from rich.console import Console

from libs.cli.client import APIClient
from libs.cli.demo_cloud import NETWORK, DemoFailed, deploy, seed

from .fakeapi import ADMIN_TOKEN, FakeAPI


def client(api: FakeAPI) -> APIClient:
    return APIClient("http://tetsu.test", ADMIN_TOKEN, transport=httpx.MockTransport(api.handler))


def quiet() -> Console:
    return Console(file=io.StringIO())


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
