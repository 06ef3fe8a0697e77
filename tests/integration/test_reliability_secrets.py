"""Secrets and project isolation on the live stack (the services as processes on the real
RabbitMQ and PostgreSQL): a BMC password is never shown again once written, API tokens are
stored only hashed, a deploy ramdisk's callback token works once, for one node and one
ramdisk run, and a member never reaches another project's objects through any route.

The nodes boot with the ``pxe`` boot and ``ramdisk`` deploy interfaces (fake power): the
test plays the deploy ramdisk, fetching its job (with the callback token) from the
conductor's boot server and calling the API back, as the real ramdisk does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, free_port, running_stack, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "Kn0wn-BMC-pa55word-7f3e"
NEW_PASSWORD = "R0tated-BMC-pa55word-91ac"
IMAGE = b"tetsu secrets test image\n" * 256


@dataclass
class Cloud:
    stack: Stack
    database_url: str
    boot_url: str
    #: Every response the test received from the API: (method url, status, headers, body).
    responses: list[str] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        """An API client that keeps every response it receives, for the grep at the end."""

        def keep(response: httpx.Response) -> None:
            response.read()
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            self.responses.append(
                f"{response.request.method} {response.request.url} {response.status_code}\n"
                f"{headers}\n{response.text}"
            )

        return httpx.Client(
            base_url=self.stack.endpoint,
            headers={"Authorization": f"Bearer {token or self.stack.admin_token}"},
            timeout=30.0,
            event_hooks={"response": [keep]},
        )


@pytest.fixture(scope="module")
def cloud(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    workdir = tmp_path_factory.mktemp("secrets")
    api_port, boot_port = free_port(), free_port()
    boot_url = f"http://127.0.0.1:{boot_port}"
    # The test plays the ramdisk: the boot server only needs files to link to.
    ramdisk = workdir / "ramdisk"
    ramdisk.mkdir()
    for part in ("vmlinuz", "initramfs"):
        (ramdisk / part).write_bytes(b"not booted in this test\n")
    env = {
        "TETSU_ENABLED_BOOT_INTERFACES": '["fake", "pxe"]',
        "TETSU_ENABLED_DEPLOY_INTERFACES": '["fake", "ramdisk"]',
        "TETSU_BOOT_ROOT": str(workdir / "boot"),
        "TETSU_BOOT_SERVER_PORT": str(boot_port),
        "TETSU_BOOT_SERVER_URL": boot_url,
        "TETSU_TFTP_PORT": "0",
        "TETSU_CALLBACK_URL": f"http://127.0.0.1:{api_port}",
        "TETSU_RAMDISK_KERNEL": str(ramdisk / "vmlinuz"),
        "TETSU_RAMDISK_INITRAMFS": str(ramdisk / "initramfs"),
        "TETSU_CALLBACK_TIMEOUT": "120",
        "TETSU_MAX_ATTEMPTS": "1",
    }
    name, url = create_database()
    try:
        with running_stack(
            workdir, database_url=url, transport_url=amqp_url, port=api_port, extra_env=env
        ) as stack:
            yield Cloud(stack, url, boot_url)
    finally:
        drop_database(name)


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def node_state(admin: httpx.Client, node_id: str) -> str:
    return str(ok(admin.get(f"/v1/nodes/{node_id}"), 200)["provision_state"])


def wait_state(admin: httpx.Client, node_id: str, state: str, timeout: float = 90) -> None:
    wait_for(
        lambda: node_state(admin, node_id) == state,
        timeout=timeout,
        what=f"node {node_id} {state!r}",
    )


def fetch_job(cloud: Cloud, node_id: str, action: str) -> dict[str, str]:
    """The ramdisk's job for ``node_id`` from the boot server, as the ramdisk polls for it
    (it is served once: this GET takes it)."""

    def job() -> dict[str, str] | None:
        response = httpx.get(f"{cloud.boot_url}/jobs/{node_id}", timeout=5)
        if response.status_code != 200:
            return None
        return dict(line.split("=", 1) for line in response.text.splitlines() if "=" in line)

    found: dict[str, str] = wait_for(job, timeout=90, what=f"the {action} job of {node_id}")
    assert found["action"] == action, found
    assert found["node_id"] == node_id
    assert found["callback_url"].endswith(f"/v1/nodes/{node_id}/callback")
    return found


def call_back(cloud: Cloud, node_id: str, token: str, success: bool = True) -> httpx.Response:
    """What the ramdisk sends when its work is done (no bearer token: the job's token)."""
    with cloud.client() as client:
        # The ramdisk sends no Authorization header: only its callback token counts.
        client.headers.pop("Authorization")
        return client.post(
            f"/v1/nodes/{node_id}/callback",
            json={"token": token, "success": success, "message": "wrote 6400 bytes, sha256 ok"},
        )


def play_ramdisk(cloud: Cloud, node_id: str, action: str) -> str:
    """Fetch the node's job and report success; returns the token the job carried."""
    token = fetch_job(cloud, node_id, action)["token"]
    assert call_back(cloud, node_id, token).status_code == 202
    return token


def enroll(admin: httpx.Client, name: str, mac: str, resource_class: str) -> str:
    node = ok(
        admin.post(
            "/v1/nodes",
            json={
                "name": name,
                "resource_class": resource_class,
                "properties": {"cpus": 4, "memory_mb": 4096, "disk_gb": 40},
                "boot_interface": "pxe",
                "deploy_interface": "ramdisk",
                "driver_info": {
                    "ipmi_address": "10.0.0.9",
                    "ipmi_username": "admin",
                    "ipmi_password": PASSWORD,
                },
            },
        ),
        201,
    )
    ok(admin.post("/v1/ports", json={"address": mac, "node_id": node["id"]}), 201)
    ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "manage"}))
    return str(node["id"])


def provide(cloud: Cloud, admin: httpx.Client, node_id: str) -> None:
    """Provide the node: it is cleaned by the (played) ramdisk and becomes available."""
    ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "provide"}))
    play_ramdisk(cloud, node_id, "clean")
    wait_state(admin, node_id, "available")


def flavor_and_image(admin: httpx.Client, resource_class: str) -> tuple[str, str]:
    flavor = ok(
        admin.post(
            "/v1/flavors",
            json={
                "name": f"bm.{resource_class}",
                "resource_class": resource_class,
                "cpus": 2,
                "memory_mb": 2048,
                "disk_gb": 20,
            },
        ),
        201,
    )
    image = ok(
        admin.post(
            "/v1/images",
            json={"name": f"img-{resource_class}", "disk_format": "raw", "visibility": "public"},
        ),
        201,
    )
    uploaded = ok(admin.put(f"/v1/images/{image['id']}/file", content=IMAGE), 200)
    assert uploaded["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    return str(flavor["id"]), str(image["id"])


def member_token(cloud: Cloud, admin: httpx.Client, name: str) -> str:
    project = ok(admin.post("/v1/projects", json={"name": f"{name}-project"}), 201)
    password = f"{name}-password-123"
    ok(
        admin.post(
            "/v1/users",
            json={
                "name": name,
                "password": password,
                "project_id": project["id"],
                "role": "member",
            },
        ),
        201,
    )
    with cloud.client() as anonymous:
        anonymous.headers.pop("Authorization")
        response = anonymous.post("/v1/tokens", json={"name": name, "password": password})
    return str(ok(response, 201)["token"])


def instance_status(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/instances/{instance_id}"), 200)


def test_a_known_bmc_password_never_appears_in_logs_responses_or_error_replies(
    cloud: Cloud,
) -> None:
    with cloud.client() as admin:
        node_id = enroll(admin, "pw-node", "52:54:00:5e:00:01", "secrets")
        provide(cloud, admin, node_id)
        flavor, image = flavor_and_image(admin, "secrets")
        token = member_token(cloud, admin, "pw-user")

        # A full deploy and delete on the node holding the password.
        with cloud.client(token) as member:
            created = ok(
                member.post(
                    "/v1/instances", json={"name": "pw-vm", "flavor": flavor, "image": image}
                ),
                202,
            )
            play_ramdisk(cloud, node_id, "deploy")
            wait_for(
                lambda: instance_status(member, created["id"])["status"] == "ACTIVE",
                timeout=90,
                what="the instance ACTIVE",
            )
            ok(member.delete(f"/v1/instances/{created['id']}"), 202)
            play_ramdisk(cloud, node_id, "clean")
            wait_for(
                lambda: instance_status(member, created["id"])["status"] == "DELETED",
                timeout=90,
                what="the instance DELETED",
            )
        wait_state(admin, node_id, "available")

        # The password is write-only: masked in every answer, and a new one too.
        shown = ok(admin.get(f"/v1/nodes/{node_id}"), 200)
        assert shown["driver_info"]["ipmi_password"] == "******"
        assert shown["driver_info"]["ipmi_username"] == "admin"
        patched = ok(
            admin.patch(
                f"/v1/nodes/{node_id}", json={"driver_info": {"ipmi_password": NEW_PASSWORD}}
            ),
            200,
        )
        assert patched["driver_info"]["ipmi_password"] == "******"
        ok(admin.get("/v1/nodes", params={"limit": 1000}), 200)

        # A BMC whose every power action fails with a message quoting the password: the
        # error reaches the caller (an RPC error reply turned into the HTTP answer) and the
        # node's last_error, scrubbed.
        broken = ok(
            admin.post(
                "/v1/nodes",
                json={
                    "name": "pw-broken-bmc",
                    "resource_class": "secrets-broken",
                    "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
                    "driver_info": {
                        "ipmi_password": PASSWORD,
                        "fake_power_error": f"BMC refused user admin with password {PASSWORD}",
                    },
                },
            ),
            201,
        )

        # Power actions run after the answer (202); their failure is the node's last_error.
        def last_error(start: str) -> str | None:
            error = ok(admin.get(f"/v1/nodes/{broken['id']}"), 200)["last_error"]
            return error if error and error.startswith(start) else None

        ok(admin.put(f"/v1/nodes/{broken['id']}/states/power", json={"target": "power on"}))
        error = wait_for(lambda: last_error("power on failed"), timeout=30, what="power on failed")
        assert error == "power on failed: BMC refused user admin with password ***"
        ok(admin.put(f"/v1/nodes/{broken['id']}/states/provision", json={"target": "manage"}))
        error = wait_for(lambda: last_error("cannot manage"), timeout=30, what="manage failed")
        assert error.endswith("BMC refused user admin with password ***")
        assert node_state(admin, broken["id"]) == "enroll"
        # The note quoting the password is shown with it masked as well.
        shown = ok(admin.get(f"/v1/nodes/{broken['id']}"), 200)["driver_info"]
        assert shown["fake_power_error"] == "BMC refused user admin with password ***"
        validation = ok(admin.get(f"/v1/nodes/{broken['id']}/validate"), 200)
        assert validation["power"]["result"] is True

    seen = [entry for entry in cloud.responses if PASSWORD in entry or NEW_PASSWORD in entry]
    assert not seen, seen[:3]
    assert len(cloud.responses) > 20
    files = [p for p in cloud.stack.workdir.rglob("*") if p.is_file()]
    assert {f"{name}.log" for name in cloud.stack.processes} <= {p.name for p in files}
    leaked = [
        str(p)
        for p in files
        if PASSWORD.encode() in p.read_bytes() or NEW_PASSWORD.encode() in p.read_bytes()
    ]
    assert not leaked, leaked
    # The grep is meaningful: the logs did record the work that handled the password.
    api_log = (cloud.stack.workdir / "api.log").read_text(errors="replace")
    assert "callback" in api_log


def test_api_tokens_are_stored_only_as_their_hash(cloud: Cloud) -> None:
    with cloud.client() as admin:
        tokens = [member_token(cloud, admin, f"hash-user-{i}") for i in range(2)]
    engine = create_engine(cloud.database_url)
    try:
        with engine.connect() as connection:
            rows = [tuple(map(str, row)) for row in connection.execute(text("SELECT * FROM token"))]
            users = connection.execute(
                text("SELECT password_hash FROM \"user\" WHERE name LIKE 'hash-user-%'")
            ).scalars()
            password_hashes = list(users)
    finally:
        engine.dispose()
    assert rows
    dump = "\n".join(" ".join(row) for row in rows)
    for token in tokens:
        assert token not in dump
        assert hashlib.sha256(token.encode()).hexdigest() in dump
    assert len(password_hashes) == 2
    for stored in password_hashes:
        assert stored.startswith("scrypt$")
        assert "password-123" not in stored
    # A stored digest is no token: presenting it is refused.
    digest = hashlib.sha256(tokens[0].encode()).hexdigest()
    with cloud.client(digest) as client:
        assert client.get("/v1/instances").status_code == 401
    with cloud.client(tokens[0]) as client:
        assert client.get("/v1/instances").status_code == 200


def test_callback_tokens_work_once_for_one_node_and_one_ramdisk_run(cloud: Cloud) -> None:
    with cloud.client() as admin:
        node_a = enroll(admin, "cb-node-a", "52:54:00:cb:00:0a", "callback")
        node_b = enroll(admin, "cb-node-b", "52:54:00:cb:00:0b", "callback")
        flavor, image = flavor_and_image(admin, "callback")
        for node_id in (node_a, node_b):
            ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "provide"}))
        clean_a = fetch_job(cloud, node_a, "clean")["token"]
        clean_b = fetch_job(cloud, node_b, "clean")["token"]
        assert clean_a != clean_b

        # Bound to its node: B's token on A's callback is refused, and A keeps waiting.
        assert call_back(cloud, node_a, clean_b).status_code == 401
        assert node_state(admin, node_a) == "clean wait"
        # Single-use: accepted once, refused when sent again.
        assert call_back(cloud, node_a, clean_a).status_code == 202
        wait_state(admin, node_a, "available")
        assert call_back(cloud, node_a, clean_a).status_code == 401
        assert call_back(cloud, node_b, clean_b).status_code == 202
        wait_state(admin, node_b, "available")
        # Only A is offered, so both deploys below land on it.
        ok(admin.put(f"/v1/nodes/{node_b}/states/provision", json={"target": "manage"}))
        wait_state(admin, node_b, "manageable")

        first = ok(
            admin.post("/v1/instances", json={"name": "cb-1", "flavor": flavor, "image": image}),
            202,
        )
        deploy_1 = fetch_job(cloud, node_a, "deploy")["token"]
        wait_state(admin, node_a, "wait call-back")
        # A token of an earlier ramdisk run on the same node is refused.
        assert call_back(cloud, node_a, clean_a).status_code == 401
        assert call_back(cloud, node_a, deploy_1).status_code == 202
        wait_for(
            lambda: instance_status(admin, first["id"])["status"] == "ACTIVE",
            timeout=90,
            what="the first instance ACTIVE",
        )
        assert call_back(cloud, node_a, deploy_1).status_code == 401
        assert node_state(admin, node_a) == "active"

        ok(admin.delete(f"/v1/instances/{first['id']}"), 202)
        play_ramdisk(cloud, node_a, "clean")
        wait_state(admin, node_a, "available")
        second = ok(
            admin.post("/v1/instances", json={"name": "cb-2", "flavor": flavor, "image": image}),
            202,
        )
        deploy_2 = fetch_job(cloud, node_a, "deploy")["token"]
        wait_state(admin, node_a, "wait call-back")
        # Bound to one deploy: the first deploy's token does not finish the second one,
        # not even as a failure report.
        replay = call_back(cloud, node_a, deploy_1)
        assert replay.status_code == 401
        assert "token" in replay.json()["error"]["reason"]
        time.sleep(1)
        assert node_state(admin, node_a) == "wait call-back"
        assert instance_status(admin, second["id"])["status"] == "BUILD"
        assert call_back(cloud, node_a, deploy_2).status_code == 202
        wait_for(
            lambda: instance_status(admin, second["id"])["status"] == "ACTIVE",
            timeout=90,
            what="the second instance ACTIVE",
        )
        assert ok(admin.get(f"/v1/instances/{second['id']}"), 200)["node_id"] == node_a
        ok(admin.delete(f"/v1/instances/{second['id']}"), 202)
        play_ramdisk(cloud, node_a, "clean")
        wait_state(admin, node_a, "available")


@dataclass
class Attempt:
    """Mallory (a member of another project) tries ``method path`` on Alice's project's
    objects or the operator's; ``route`` is the OpenAPI path it exercises."""

    method: str
    route: str
    path: str
    status: int
    body: dict[str, Any] | None = None
    content: bytes | None = None
    absent: str | None = None  # an id that must not be in a 200 answer


def isolation_attempts(o: dict[str, str]) -> list[Attempt]:
    """Every route of the API, with what a member of another project gets: 404 for what
    a project owns (it does not exist for them), 403 for what only an admin may touch."""
    a = Attempt
    flavor = {"name": "f", "resource_class": "x", "cpus": 1, "memory_mb": 1, "disk_gb": 1}
    node = {
        "name": "n",
        "resource_class": "x",
        "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
    }
    instance = {"name": "i", "flavor": o["flavor"], "image": o["public_image"]}
    return [
        a("GET", "/healthz", "/healthz", 200),
        a("GET", "/v1/conductors", "/v1/conductors", 403),
        a("GET", "/v1/hypervisors", "/v1/hypervisors", 403),
        a("GET", "/v1/hypervisors/{hypervisor_ref}", "/v1/hypervisors/hv-x", 403),
        a("DELETE", "/v1/hypervisors/{hypervisor_ref}", "/v1/hypervisors/hv-x", 403),
        # Events are a project's: another's never show (the stream, outside the OpenAPI
        # document, is checked by tests/integration/test_events.py).
        a("GET", "/v1/events", "/v1/events", 200, absent=o["instance"]),
        a("GET", "/v1/events", f"/v1/events?object_id={o['instance']}", 200, absent=o["instance"]),
        # Flavors are public to read; only an admin changes them.
        a("GET", "/v1/flavors", "/v1/flavors", 200),
        a("POST", "/v1/flavors", "/v1/flavors", 403, flavor),
        a("GET", "/v1/flavors/{flavor_ref}", f"/v1/flavors/{o['flavor']}", 200),
        a("DELETE", "/v1/flavors/{flavor_ref}", f"/v1/flavors/{o['flavor']}", 403),
        # Images: another project's private image does not exist; a public one is read-only.
        a("GET", "/v1/images", "/v1/images", 200, absent=o["image"]),
        a("POST", "/v1/images", "/v1/images", 403, {"name": "x", "visibility": "public"}),
        a("GET", "/v1/images/{image_id}", f"/v1/images/{o['image']}", 404),
        a("DELETE", "/v1/images/{image_id}", f"/v1/images/{o['image']}", 404),
        a("DELETE", "/v1/images/{image_id}", f"/v1/images/{o['public_image']}", 403),
        a("GET", "/v1/images/{image_id}/file", f"/v1/images/{o['image']}/file", 404),
        a(
            "PUT",
            "/v1/images/{image_id}/file",
            f"/v1/images/{o['queued_image']}/file",
            404,
            content=b"x",
        ),
        a(
            "PUT",
            "/v1/images/{image_id}/file",
            f"/v1/images/{o['public_queued']}/file",
            403,
            content=b"x",
        ),
        # Instances and networks belong to a project.
        a("GET", "/v1/instances", "/v1/instances", 200, absent=o["instance"]),
        a("GET", "/v1/instances", f"/v1/instances?project_id={o['project']}", 403),
        a("POST", "/v1/instances", "/v1/instances", 400, {**instance, "networks": [o["network"]]}),
        a("POST", "/v1/instances", "/v1/instances", 400, {**instance, "image": o["image"]}),
        a("GET", "/v1/instances/{instance_id}", f"/v1/instances/{o['instance']}", 404),
        a("DELETE", "/v1/instances/{instance_id}", f"/v1/instances/{o['instance']}", 404),
        a(
            "POST",
            "/v1/instances/{instance_id}/rebuild",
            f"/v1/instances/{o['instance']}/rebuild",
            404,
            {},
        ),
        a(
            "POST",
            "/v1/instances/{instance_id}/evacuate",
            f"/v1/instances/{o['instance']}/evacuate",
            403,
        ),
        a("GET", "/v1/networks", "/v1/networks", 200, absent=o["network"]),
        a("GET", "/v1/networks", f"/v1/networks?project_id={o['project']}", 403),
        a("POST", "/v1/networks", "/v1/networks", 403, {"name": "x", "project_id": o["project"]}),
        a("GET", "/v1/networks/{network_id}", f"/v1/networks/{o['network']}", 404),
        a("DELETE", "/v1/networks/{network_id}", f"/v1/networks/{o['network']}", 404),
        # Nodes, ports, projects, users: the operator's.
        a("GET", "/v1/nodes", "/v1/nodes", 403),
        a("POST", "/v1/nodes", "/v1/nodes", 403, node),
        a("GET", "/v1/nodes/{node_ref}", f"/v1/nodes/{o['node']}", 403),
        a("PATCH", "/v1/nodes/{node_ref}", f"/v1/nodes/{o['node']}", 403, {"name": "mine"}),
        a("DELETE", "/v1/nodes/{node_ref}", f"/v1/nodes/{o['node']}", 403),
        a("GET", "/v1/nodes/{node_ref}/validate", f"/v1/nodes/{o['node']}/validate", 403),
        a(
            "PUT",
            "/v1/nodes/{node_ref}/states/power",
            f"/v1/nodes/{o['node']}/states/power",
            403,
            {"target": "power off"},
        ),
        a(
            "PUT",
            "/v1/nodes/{node_ref}/states/provision",
            f"/v1/nodes/{o['node']}/states/provision",
            403,
            {"target": "manage"},
        ),
        # The callback takes a ramdisk's token only: a user's bearer token is no such thing.
        a(
            "POST",
            "/v1/nodes/{node_id}/callback",
            f"/v1/nodes/{o['node']}/callback",
            401,
            {"token": o["mallory"], "success": False},
        ),
        a("GET", "/v1/ports", "/v1/ports", 403),
        a(
            "POST",
            "/v1/ports",
            "/v1/ports",
            403,
            {"address": "52:54:00:00:99:99", "node_id": o["node"]},
        ),
        a("GET", "/v1/ports/{port_id}", f"/v1/ports/{o['port']}", 403),
        a(
            "PATCH",
            "/v1/ports/{port_id}",
            f"/v1/ports/{o['port']}",
            403,
            {"address": "52:54:00:00:99:98"},
        ),
        a("DELETE", "/v1/ports/{port_id}", f"/v1/ports/{o['port']}", 403),
        a("GET", "/v1/projects", "/v1/projects", 403),
        a("POST", "/v1/projects", "/v1/projects", 403, {"name": "x"}),
        a("GET", "/v1/projects/{project_id}", f"/v1/projects/{o['project']}", 403),
        a("DELETE", "/v1/projects/{project_id}", f"/v1/projects/{o['project']}", 403),
        a("GET", "/v1/users", "/v1/users", 403),
        a(
            "POST",
            "/v1/users",
            "/v1/users",
            403,
            {
                "name": "x",
                "password": "long-enough-pw",
                "project_id": o["project"],
                "role": "admin",
            },
        ),
        a("GET", "/v1/users/{user_id}", f"/v1/users/{o['alice_id']}", 403),
        a("DELETE", "/v1/users/{user_id}", f"/v1/users/{o['alice_id']}", 403),
        # A token is only had with the user's own password.
        a("POST", "/v1/tokens", "/v1/tokens", 401, {"name": "alice", "password": "mallory-pw-123"}),
    ]


@pytest.fixture(scope="module")
def estate(cloud: Cloud) -> dict[str, str]:
    """Alice's project (an image, a network, an instance) and Mallory in another project,
    plus the operator's node, port, flavor and public images."""
    with cloud.client() as admin:
        project = ok(admin.post("/v1/projects", json={"name": "acme"}), 201)
        other = ok(admin.post("/v1/projects", json={"name": "other"}), 201)
        alice = ok(
            admin.post(
                "/v1/users",
                json={
                    "name": "alice",
                    "password": "alice-pw-123",
                    "project_id": project["id"],
                    "role": "member",
                },
            ),
            201,
        )
        ok(
            admin.post(
                "/v1/users",
                json={
                    "name": "mallory",
                    "password": "mallory-pw-123",
                    "project_id": other["id"],
                    "role": "member",
                },
            ),
            201,
        )
        node = ok(
            admin.post(
                "/v1/nodes",
                json={
                    "name": "iso-node",
                    "resource_class": "iso",
                    "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
                },
            ),
            201,
        )
        port = ok(
            admin.post("/v1/ports", json={"address": "52:54:00:15:00:01", "node_id": node["id"]}),
            201,
        )
        # No node has this resource class: Alice's instance ends in ERROR, and stays hers.
        flavor = ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.iso",
                    "resource_class": "nowhere",
                    "cpus": 1,
                    "memory_mb": 1,
                    "disk_gb": 1,
                },
            ),
            201,
        )
        public = ok(
            admin.post("/v1/images", json={"name": "iso-public", "visibility": "public"}), 201
        )
        ok(admin.put(f"/v1/images/{public['id']}/file", content=IMAGE), 200)
        public_queued = ok(
            admin.post("/v1/images", json={"name": "iso-public-2", "visibility": "public"}), 201
        )
    tokens = {}
    for name in ("alice", "mallory"):
        with cloud.client() as anonymous:
            anonymous.headers.pop("Authorization")
            login = anonymous.post("/v1/tokens", json={"name": name, "password": f"{name}-pw-123"})
        tokens[name] = str(ok(login, 201)["token"])
    with cloud.client(tokens["alice"]) as member:
        image = ok(member.post("/v1/images", json={"name": "acme-private"}), 201)
        ok(member.put(f"/v1/images/{image['id']}/file", content=IMAGE), 200)
        queued = ok(member.post("/v1/images", json={"name": "acme-queued"}), 201)
        network = ok(member.post("/v1/networks", json={"name": "acme-net"}), 201)
        instance = ok(
            member.post(
                "/v1/instances",
                json={
                    "name": "acme-vm",
                    "flavor": flavor["id"],
                    "image": image["id"],
                    "networks": [network["id"]],
                },
            ),
            202,
        )
    return {
        "project": project["id"],
        "alice_id": alice["id"],
        "alice": tokens["alice"],
        "mallory": tokens["mallory"],
        "node": node["id"],
        "port": port["id"],
        "flavor": flavor["id"],
        "public_image": public["id"],
        "public_queued": public_queued["id"],
        "image": image["id"],
        "queued_image": queued["id"],
        "network": network["id"],
        "instance": instance["id"],
    }


def test_a_member_reaches_no_other_projects_objects_through_any_route(
    cloud: Cloud, estate: dict[str, str]
) -> None:
    attempts = isolation_attempts(estate)
    with cloud.client() as admin:
        published = admin.get("/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, ops in published.items() for method in ops}
    covered = {(a.method, a.route) for a in attempts}
    assert routes - covered == set(), "a route without an isolation case: add one here"
    assert covered - routes == set(), "an isolation case for a route the API no longer has"

    wrong = []
    with cloud.client(estate["mallory"]) as mallory:
        for attempt in attempts:
            response = mallory.request(
                attempt.method, attempt.path, json=attempt.body, content=attempt.content
            )
            if response.status_code != attempt.status:
                wrong.append(
                    f"{attempt.method} {attempt.path}: {response.status_code} {response.text}"
                )
            elif attempt.status >= 400:
                assert response.json()["error"]["reason"], attempt
            elif attempt.absent is not None:
                assert attempt.absent not in response.text, attempt
    assert not wrong, "\n".join(wrong)

    # Nothing of Alice's or the operator's changed.
    with cloud.client(estate["alice"]) as alice:
        assert ok(alice.get(f"/v1/instances/{estate['instance']}"), 200)["status"] != "DELETED"
        assert alice.get(f"/v1/images/{estate['image']}/file").content == IMAGE
        assert ok(alice.get(f"/v1/images/{estate['queued_image']}"), 200)["status"] == "queued"
        assert ok(alice.get(f"/v1/networks/{estate['network']}"), 200)["name"] == "acme-net"
        listed = alice.get("/v1/instances").json()["instances"]
        assert [row["id"] for row in listed] == [estate["instance"]]
    with cloud.client() as admin:
        assert ok(admin.get(f"/v1/nodes/{estate['node']}"), 200)["name"] == "iso-node"
        assert ok(admin.get(f"/v1/ports/{estate['port']}"), 200)["address"] == "52:54:00:15:00:01"
        assert ok(admin.get(f"/v1/flavors/{estate['flavor']}"), 200)["name"] == "bm.iso"
        assert ok(admin.get(f"/v1/images/{estate['public_queued']}"), 200)["status"] == "queued"
        assert ok(admin.get(f"/v1/projects/{estate['project']}"), 200)["name"] == "acme"
        assert ok(admin.get(f"/v1/users/{estate['alice_id']}"), 200)["role"] == "member"
        users = admin.get("/v1/users", params={"limit": 1000}).json()["users"]
        assert "x" not in {u["name"] for u in users}
        projects = admin.get("/v1/projects", params={"limit": 1000}).json()["projects"]
        assert "x" not in {p["name"] for p in projects}
