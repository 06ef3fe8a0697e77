"""The dashboard (/ui): signing in with a token, the session cookie and its anti-forgery
token, project scoping, admin-only pages, and the API's reasons shown on the page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from libs.db import Database, Instance, InstanceStatus, Node, Port
from services.api.auth import CSRF_HEADER, SESSION_COOKIE, csrf_token

from .support import ADMIN_TOKEN, Catalog, Member

FRAGMENT = {"X-Tetsu-Fragment": "1"}


def token_of(member: Member) -> str:
    return member.headers["Authorization"].removeprefix("Bearer ")


def signed_in(client: TestClient, token: str, base_url: str = "http://testserver") -> TestClient:
    """A browser of its own (cookie jar) on the same app, signed in through the form."""
    browser = TestClient(client.app, base_url=base_url, follow_redirects=False)
    response = browser.post("/ui/login", data={"token": token})
    assert response.status_code == 303, response.text
    return browser


def csrf_of(page_html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page_html)
    assert found, "the page has no anti-forgery token"
    return found.group(1)


def create_via_form(browser: TestClient, catalog: Catalog, name: str, **extra: Any) -> Any:
    csrf = csrf_of(browser.get("/ui/").text)
    form = {
        "csrf_token": csrf,
        "name": name,
        "flavor": catalog.flavor["id"],
        "image": catalog.image["id"],
        **extra,
    }
    return browser.post("/ui/instances", data=form)


def instances_named(db: Database, name: str) -> list[Instance]:
    with db.session() as session:
        rows = list(session.exec(select(Instance).where(col(Instance.name) == name)).all())
        session.expunge_all()
        return rows


# Signing in and out


def test_pages_send_a_visitor_without_a_session_to_sign_in(client: TestClient) -> None:
    browser = TestClient(client.app, follow_redirects=False)
    for path in ("/ui/", "/ui/networks", "/ui/images", "/ui/nodes"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login"
    assert browser.get("/ui/login").status_code == 200


def test_signing_in_sets_an_httponly_strict_cookie(client: TestClient, alice: Member) -> None:
    browser = TestClient(client.app, follow_redirects=False)
    response = browser.post("/ui/login", data={"token": token_of(alice)})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={token_of(alice)};")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    page = browser.get("/ui/")
    assert page.status_code == 200
    assert "alice" in page.text and "alice-project" in page.text


def test_the_cookie_is_secure_over_https(client: TestClient, alice: Member) -> None:
    browser = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    response = browser.post("/ui/login", data={"token": token_of(alice)})
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize("token", ["", "not-a-token", "x" * 5000])
def test_a_wrong_token_is_refused_with_a_reason(client: TestClient, token: str) -> None:
    browser = TestClient(client.app, follow_redirects=False)
    response = browser.post("/ui/login", data={"token": token})
    assert response.status_code in (400, 401)
    assert "set-cookie" not in response.headers
    assert 'role="alert"' in response.text
    assert "token" in response.text.lower()
    assert browser.get("/ui/").status_code == 303


def test_an_expired_or_revoked_session_goes_back_to_sign_in(client: TestClient) -> None:
    browser = TestClient(client.app, follow_redirects=False)
    browser.cookies.set(SESSION_COOKIE, "forged-token")
    response = browser.get("/ui/")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert browser.get("/ui/instances/rows", headers=FRAGMENT).status_code == 401


def test_signing_out_clears_the_cookie(client: TestClient, alice: Member) -> None:
    browser = signed_in(client, token_of(alice))
    csrf = csrf_of(browser.get("/ui/").text)
    assert browser.post("/ui/logout", data={}).status_code == 403  # no anti-forgery token
    response = browser.post("/ui/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert browser.get("/ui/").status_code == 303


def test_the_admin_token_signs_in_as_admin(client: TestClient) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    page = browser.get("/ui/").text
    assert 'href="/ui/nodes"' in page and 'href="/ui/conductors"' in page


# The cookie on the REST API


def test_the_cookie_authenticates_rest_reads_and_writes_need_the_csrf_header(
    client: TestClient, alice: Member, catalog: Catalog
) -> None:
    browser = signed_in(client, token_of(alice))
    assert browser.get("/v1/instances").status_code == 200
    body = {"name": "rest", "flavor": catalog.flavor["id"], "image": catalog.image["id"]}
    refused = browser.post("/v1/instances", json=body)
    assert refused.status_code == 403
    assert CSRF_HEADER in refused.json()["error"]["reason"]
    wrong = browser.post("/v1/instances", json=body, headers={CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403
    accepted = browser.post(
        "/v1/instances", json=body, headers={CSRF_HEADER: csrf_token(token_of(alice))}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["project_id"] == alice.project_id


def test_a_bearer_token_wins_over_the_cookie(
    client: TestClient, alice: Member, bob: Member
) -> None:
    browser = signed_in(client, token_of(alice))
    listed = browser.get("/v1/networks", headers=bob.headers)
    assert listed.status_code == 200
    created = browser.post("/v1/networks", json={"name": "bobs"}, headers=bob.headers)
    assert created.status_code == 201  # a bearer request needs no anti-forgery token
    assert created.json()["project_id"] == bob.project_id


# Forms and the anti-forgery token


def test_a_form_without_the_right_csrf_token_changes_nothing(
    client: TestClient, db: Database, alice: Member, catalog: Catalog
) -> None:
    browser = signed_in(client, token_of(alice))
    form = {"name": "forged", "flavor": catalog.flavor["id"], "image": catalog.image["id"]}
    for extra in ({}, {"csrf_token": "0" * 64}, {"csrf_token": csrf_token("another-session")}):
        response = browser.post("/ui/instances", data={**form, **extra})
        assert response.status_code == 403
        assert "reload the page" in response.text
    assert instances_named(db, "forged") == []


def test_creating_an_instance_with_the_form(
    client: TestClient, db: Database, alice: Member, catalog: Catalog, backend: Any
) -> None:
    browser = signed_in(client, token_of(alice))
    network = client.post("/v1/networks", json={"name": "net-a"}, headers=alice.headers).json()
    response = create_via_form(browser, catalog, "web1", networks=network["id"])
    assert response.status_code == 303
    (instance,) = instances_named(db, "web1")
    assert instance.project_id == alice.project_id
    assert instance.user_id == alice.user_id
    assert instance.network_ids == [network["id"]]
    backend.scheduler.recorder.wait_for("schedule_instance", instance_id=instance.id)
    page = browser.get("/ui/").text
    assert f'id="instance-{instance.id}"' in page
    assert "BUILD" in page and "net-a" in page and "ubuntu" in page


def test_the_script_gets_the_new_row_back(
    client: TestClient, alice: Member, catalog: Catalog
) -> None:
    browser = signed_in(client, token_of(alice))
    csrf = csrf_of(browser.get("/ui/").text)
    form = {
        "csrf_token": csrf,
        "name": "web2",
        "flavor": catalog.flavor["name"],
        "image": catalog.image["name"],
    }
    response = browser.post("/ui/instances", data=form, headers=FRAGMENT)
    assert response.status_code == 202
    assert response.text.strip().startswith('<tr id="instance-')
    assert "web2" in response.text and "BUILD" in response.text


def test_a_refused_create_shows_the_api_reason(
    client: TestClient, alice: Member, catalog: Catalog
) -> None:
    browser = signed_in(client, token_of(alice))
    response = create_via_form(browser, catalog, "bad", flavor="no-such-flavor")
    assert response.status_code == 400
    assert "flavor &#39;no-such-flavor&#39; not found" in response.text
    assert "Traceback" not in response.text
    assert 'id="create-instance"' in response.text  # the page, with its form, again
    csrf = csrf_of(response.text)
    script = browser.post(
        "/ui/instances",
        data={"csrf_token": csrf, "name": "", "flavor": "x", "image": "y"},
        headers=FRAGMENT,
    )
    assert script.status_code == 400
    error = script.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["reason"].startswith("name:")


def test_deleting_an_instance_with_the_form(
    client: TestClient, db: Database, alice: Member, catalog: Catalog
) -> None:
    browser = signed_in(client, token_of(alice))
    create_via_form(browser, catalog, "doomed")
    (instance,) = instances_named(db, "doomed")
    csrf = csrf_of(browser.get("/ui/").text)
    response = browser.post(
        f"/ui/instances/{instance.id}/delete", data={"csrf_token": csrf}, headers=FRAGMENT
    )
    assert response.status_code == 202
    assert "DELETED" in response.text  # never scheduled: deleted at once
    (instance,) = instances_named(db, "doomed")
    assert instance.status == InstanceStatus.DELETED
    again = browser.post(f"/ui/instances/{instance.id}/delete", data={"csrf_token": csrf})
    assert again.status_code == 404
    assert "already deleted" in again.text


# Project scoping


def test_a_member_never_sees_or_touches_another_projects_instance(
    client: TestClient, db: Database, alice: Member, bob: Member, catalog: Catalog
) -> None:
    alices = signed_in(client, token_of(alice))
    create_via_form(alices, catalog, "alice-secret-box")
    (instance,) = instances_named(db, "alice-secret-box")
    bobs = signed_in(client, token_of(bob))
    for path in ("/ui/", "/ui/instances/rows"):
        page = bobs.get(path, headers=FRAGMENT)
        assert page.status_code == 200
        assert "alice-secret-box" not in page.text and instance.id not in page.text
    assert bobs.get(f"/ui/instances/{instance.id}/row", headers=FRAGMENT).status_code == 404
    csrf = csrf_of(bobs.get("/ui/").text)
    refused = bobs.post(f"/ui/instances/{instance.id}/delete", data={"csrf_token": csrf})
    assert refused.status_code == 404
    (instance,) = instances_named(db, "alice-secret-box")
    assert instance.status == InstanceStatus.BUILD
    # Alice's own page and the admin's show it.
    assert "alice-secret-box" in alices.get("/ui/").text
    assert "alice-secret-box" in signed_in(client, ADMIN_TOKEN).get("/ui/").text


def test_networks_page_is_scoped_and_creates_in_the_members_project(
    client: TestClient, alice: Member, bob: Member
) -> None:
    client.post("/v1/networks", json={"name": "bob-net"}, headers=bob.headers)
    alices = signed_in(client, token_of(alice))
    page = alices.get("/ui/networks").text
    assert "bob-net" not in page
    response = alices.post("/ui/networks", data={"csrf_token": csrf_of(page), "name": "alice-net"})
    assert response.status_code == 303
    listed = client.get("/v1/networks", headers=alice.headers).json()["networks"]
    assert [n["name"] for n in listed] == ["alice-net"]
    assert "alice-net" in alices.get("/ui/networks").text


# Admin-only pages


@pytest.mark.parametrize(
    "path", ["/ui/nodes", "/ui/conductors", "/ui/nodes/rows", "/ui/nodes/any-node"]
)
def test_operator_pages_are_refused_to_members(
    client: TestClient, alice: Member, path: str
) -> None:
    browser = signed_in(client, token_of(alice))
    response = browser.get(path)
    assert response.status_code == 403
    assert "admin role" in response.text
    assert 'href="/ui/nodes"' not in browser.get("/ui/").text


def test_operator_forms_are_refused_to_members(
    client: TestClient, db: Database, alice: Member
) -> None:
    browser = signed_in(client, token_of(alice))
    csrf = csrf_of(browser.get("/ui/").text)
    enroll = {"csrf_token": csrf, "name": "sneaky", "resource_class": "baremetal"}
    assert browser.post("/ui/nodes", data=enroll).status_code == 403
    with db.session() as session:
        assert session.exec(select(Node)).first() is None
    for action in ("maintenance", "provision", "power"):
        assert browser.post(f"/ui/nodes/x/{action}", data={"csrf_token": csrf}).status_code == 403


def enroll_form(csrf: str, **extra: str) -> dict[str, str]:
    return {
        "csrf_token": csrf,
        "name": "rack1-n1",
        "resource_class": "baremetal",
        "cpus": "8",
        "memory_mb": "16384",
        "disk_gb": "200",
        "driver_info": '{"ipmi_address": "10.0.0.9", "ipmi_password": "hunter2"}',
        "macs": "52:54:00:AA:00:01\n52-54-00-aa-00-02",
        **extra,
    }


def test_an_admin_enrolls_a_node_with_its_ports(client: TestClient, db: Database) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    csrf = csrf_of(browser.get("/ui/nodes").text)
    response = browser.post("/ui/nodes", data=enroll_form(csrf))
    assert response.status_code == 303
    with db.session() as session:
        node = session.exec(select(Node)).one()
        addresses = sorted(p.address for p in session.exec(select(Port)).all())
        node_id = node.id
        assert node.provision_state == "enroll"
        assert node.driver_info["ipmi_password"] == "hunter2"
        assert node.cpus == 8
    assert response.headers["location"] == f"/ui/nodes/{node_id}"
    assert addresses == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
    page = browser.get(f"/ui/nodes/{node_id}").text
    assert "rack1-n1" in page and "52:54:00:aa:00:01" in page
    assert "hunter2" not in page  # credentials never reach a page
    assert "rack1-n1" in browser.get("/ui/nodes").text


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"driver_info": "{not json"}, "driver_info: not valid JSON"),
        ({"driver_info": "[1]"}, "driver_info: must be a JSON object"),
        ({"cpus": "many"}, "properties.cpus: must be a whole number"),
        ({"macs": "52:54:00:zz:00:01"}, "ports: &#39;52:54:00:zz:00:01&#39;"),
    ],
)
def test_a_bad_enrollment_shows_the_reason_and_keeps_nothing(
    client: TestClient, db: Database, extra: dict[str, str], reason: str
) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    csrf = csrf_of(browser.get("/ui/nodes").text)
    response = browser.post("/ui/nodes", data=enroll_form(csrf, **extra))
    assert response.status_code == 400
    assert reason in response.text
    with db.session() as session:
        assert session.exec(select(Node)).first() is None


def test_a_taken_mac_address_leaves_no_half_enrolled_node(client: TestClient, db: Database) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    csrf = csrf_of(browser.get("/ui/nodes").text)
    assert browser.post("/ui/nodes", data=enroll_form(csrf)).status_code == 303
    again = browser.post(
        "/ui/nodes", data=enroll_form(csrf, name="rack1-n2", macs="52:54:00:aa:00:02")
    )
    assert again.status_code == 409
    assert "52:54:00:aa:00:02" in again.text
    with db.session() as session:
        assert [n.name for n in session.exec(select(Node)).all()] == ["rack1-n1"]


def test_an_admin_toggles_maintenance_and_asks_for_provision_and_power(
    client: TestClient, db: Database, backend: Any
) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    csrf = csrf_of(browser.get("/ui/nodes").text)
    browser.post("/ui/nodes", data=enroll_form(csrf, macs=""))
    with db.session() as session:
        node_id = session.exec(select(Node)).one().id
    on = browser.post(
        f"/ui/nodes/{node_id}/maintenance",
        data={"csrf_token": csrf, "maintenance": "true", "reason": "fan noise"},
        headers=FRAGMENT,
    )
    assert on.status_code == 200
    assert "yes: fan noise" in on.text and "End maintenance" in on.text
    off = browser.post(
        f"/ui/nodes/{node_id}/maintenance",
        data={"csrf_token": csrf, "maintenance": "false", "next": f"/ui/nodes/{node_id}"},
    )
    assert off.status_code == 303
    assert off.headers["location"] == f"/ui/nodes/{node_id}"
    with db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        assert node.maintenance is False and node.maintenance_reason is None
    manage = browser.post(
        f"/ui/nodes/{node_id}/provision",
        data={"csrf_token": csrf, "target": "manage"},
        headers=FRAGMENT,
    )
    assert manage.status_code == 200
    assert "manageable" in manage.text and 'value="provide"' in manage.text
    browser.post(f"/ui/nodes/{node_id}/power", data={"csrf_token": csrf, "target": "power on"})
    backend.conductor.recorder.wait_for("set_power_state", node_id=node_id, state="power on")
    bad = browser.post(f"/ui/nodes/{node_id}/power", data={"csrf_token": csrf, "target": "explode"})
    assert bad.status_code == 400
    assert "target:" in bad.text


def test_a_form_never_redirects_off_the_dashboard(client: TestClient, db: Database) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    csrf = csrf_of(browser.get("/ui/nodes").text)
    browser.post("/ui/nodes", data=enroll_form(csrf, macs=""))
    with db.session() as session:
        node_id = session.exec(select(Node)).one().id
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui/\\evil"):
        response = browser.post(
            f"/ui/nodes/{node_id}/maintenance",
            data={"csrf_token": csrf, "maintenance": "false", "next": target},
        )
        assert response.headers["location"] == "/ui/nodes"


def test_conductors_page_shows_health(client: TestClient) -> None:
    page = signed_in(client, ADMIN_TOKEN).get("/ui/conductors")
    assert page.status_code == 200
    assert 'id="conductor-cond-1" class="alive"' in page.text


def test_pages_forbid_inline_scripts_and_framing(client: TestClient, alice: Member) -> None:
    page = signed_in(client, token_of(alice)).get("/ui/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text
    static = client.get("/ui/static/dashboard.js")
    assert static.status_code == 200
    assert "/v1/events/stream" in static.text


def test_names_are_escaped(client: TestClient, alice: Member, catalog: Catalog) -> None:
    browser = signed_in(client, token_of(alice))
    create_via_form(browser, catalog, "<img src=x onerror=alert(1)>")
    page = browser.get("/ui/").text
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_ui_is_not_in_the_rest_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_admin_pages_answer_for_admins(client: TestClient) -> None:
    browser = signed_in(client, ADMIN_TOKEN)
    for path in ("/ui/nodes", "/ui/conductors", "/ui/images", "/ui/networks", "/ui/"):
        assert browser.get(path).status_code == 200, path
    assert browser.get("/ui/nodes/no-such-node").status_code == 404
