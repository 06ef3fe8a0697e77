"""schemathesis against the live API (the services as processes on the real RabbitMQ and
PostgreSQL): every operation of the published OpenAPI, called as the admin and as a
project member with generated input, never answers 5xx and always answers as documented
(a declared status code, its content type, its headers, a body matching the schema).

The number of examples is bounded (``TETSU_FUZZ_EXAMPLES``, default 15 per operation) so
CI stays fast; raise it locally for a deeper run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("TETSU_FUZZ_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name, url = create_database()
    workdir = tmp_path_factory.mktemp("fuzz")
    try:
        with running_stack(workdir, database_url=url, transport_url=amqp_url) as running:
            yield running
            # A 5xx is logged by the API even when schemathesis does not see it fail.
            running.check_alive()
    finally:
        drop_database(name)


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Cloud:
    """The callers' tokens and, per path parameter name, ids of objects that exist."""

    tokens: dict[str, str]
    known: dict[str, list[str]]


@pytest.fixture(scope="module")
def cloud(stack: Stack) -> Cloud:
    """Objects for generated requests to find: the member's project, flavor, image, network,
    node, port and instance, and a second project with a user the fuzzer may delete."""
    image = b"fuzz image\n"
    with stack.client() as admin:
        project = created(admin.post("/v1/projects", json={"name": "fuzz"}))
        victim = created(admin.post("/v1/projects", json={"name": "victim"}))
        users = [
            created(
                admin.post(
                    "/v1/users",
                    json={
                        "name": name,
                        "password": f"{name}-password",
                        "project_id": project_id,
                        "role": "member",
                    },
                )
            )
            for name, project_id in (("fuzzer", project["id"]), ("victim", victim["id"]))
        ]
        flavor = created(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.fuzz",
                    "resource_class": "baremetal",
                    "cpus": 1,
                    "memory_mb": 1024,
                    "disk_gb": 10,
                },
            )
        )
        image_row = created(
            admin.post(
                "/v1/images",
                json={
                    "name": "fuzz-image",
                    "disk_format": "raw",
                    "visibility": "public",
                    "source_url": "http://images.example/fuzz.raw",
                    "sha256": hashlib.sha256(image).hexdigest(),
                    "size": len(image),
                },
            )
        )
        nodes = []
        for i in (1, 2):
            node = created(
                admin.post(
                    "/v1/nodes",
                    json={
                        "name": f"fuzz-node-{i}",
                        "resource_class": "baremetal",
                        "properties": {"cpus": 2, "memory_mb": 2048, "disk_gb": 20},
                        "driver_info": {"fake_delay": 0.1},
                    },
                )
            )
            nodes.append(node)
        ports = [
            created(
                admin.post(
                    "/v1/ports", json={"address": f"52:54:00:fa:00:0{i}", "node_id": node["id"]}
                )
            )
            for i, node in enumerate(nodes)
        ]
        for target in ("manage", "provide"):
            response = admin.put(
                f"/v1/nodes/{nodes[0]['id']}/states/provision", json={"target": target}
            )
            assert response.status_code == 202, response.text
        wait_for(
            lambda: (
                admin.get(f"/v1/nodes/{nodes[0]['id']}").json()["provision_state"] == "available"
            ),
            what="the node available",
        )
    login = httpx.post(
        f"{stack.endpoint}/v1/tokens", json={"name": "fuzzer", "password": "fuzzer-password"}
    )
    member = created(login)["token"]
    with stack.client(member) as client:
        network = created(client.post("/v1/networks", json={"name": "fuzz-net"}))
        response = client.post(
            "/v1/instances",
            json={"name": "fuzz-vm", "flavor": flavor["id"], "image": image_row["id"]},
        )
        assert response.status_code == 202, response.text
        instance = response.json()
    node_refs = [n["id"] for n in nodes] + [n["name"] for n in nodes]
    known = {
        "project_id": [victim["id"]],
        "user_id": [users[1]["id"]],
        "flavor_ref": [flavor["id"], flavor["name"]],
        "image_id": [image_row["id"]],
        "network_id": [network["id"]],
        "node_ref": node_refs,
        "node_id": node_refs,
        "port_id": [p["id"] for p in ports],
        "instance_id": [instance["id"]],
    }
    return Cloud({"admin": stack.admin_token, "member": member}, known)


def test_every_operation_answers_as_documented_and_never_5xx(stack: Stack, cloud: Cloud) -> None:
    api = schemathesis.openapi.from_url(f"{stack.endpoint}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        if isinstance(result, Err):  # an operation schemathesis cannot read is a finding too
            failures.append(f"invalid schema: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        # Valid input reaches the handlers; invalid input (wrong types, missing fields,
        # out-of-range values) must be a documented 4xx, never a 5xx.
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=cases, pick=st.integers(min_value=0, max_value=2**16))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call_as_both(case: Any, pick: int) -> None:
            # Random ids only ever find nothing: two times in three, a path parameter
            # names an object that exists, so the handlers behind the 404 run too.
            for name in case.path_parameters or {}:
                choices = cloud.known.get(name)
                if choices and pick % 3:
                    case.path_parameters[name] = choices[pick % len(choices)]
            for caller in ("member", "admin"):
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {cloud.tokens[caller]}"},
                    checks=CHECKS,
                    timeout=30,
                )

        try:
            call_as_both()
        except (Exception, FailureGroup) as exc:  # every operation's failures, not the first's
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 30, f"only {operations} operations in the published schema"
    stack.check_alive()
    assert not failures, "\n\n".join(failures)
