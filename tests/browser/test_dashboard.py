"""The dashboard in Debian's chromium against the four services on RabbitMQ and PostgreSQL:
a member signs in, creates an instance with the form and watches it go from BUILD to
ACTIVE and then away without the page ever reloading; another project's member never
sees it; an operator follows the nodes live."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Cloud, ok

pytestmark = [pytest.mark.browser, pytest.mark.integration]

#: Long enough for a deploy and a cleaning on fake hardware (a few seconds each).
STATE_TIMEOUT_MS = 60_000


def mark_page(page: Any) -> None:
    """A value that only lives as long as this document: a reload would lose it."""
    page.evaluate("window.__sameDocument = 'still here'")


def assert_not_reloaded(page: Any, loaded_at: int) -> None:
    assert page.evaluate("window.__sameDocument") == "still here", "the page was reloaded"
    assert page.evaluate("window.tetsu.loadedAt") == loaded_at


def statuses_seen(page: Any, instance_id: str) -> list[str]:
    """The instance statuses the page received from the event stream, in order."""
    return list(
        page.evaluate(
            """(id) => window.tetsu.events
                 .filter(e => e.object_id === id)
                 .map(e => e.payload.status)""",
            instance_id,
        )
    )


def test_member_creates_watches_and_deletes_an_instance_without_reloading(
    cloud: Cloud, open_tab: Any
) -> None:
    tab = open_tab("alice")
    page = tab.page
    tab.sign_in(cloud.alice)
    expect(page.locator("#whoami")).to_contain_text("alice")
    tab.wait_live()
    mark_page(page)
    loaded_at = page.evaluate("window.tetsu.loadedAt")

    form = page.locator("#create-instance")
    form.locator("input[name=name]").fill("web-browser")
    form.locator("select[name=flavor]").select_option(label="bm.small (4 CPU, 8192 MiB, 100 GB)")
    form.locator("select[name=image]").select_option(label="debian-12")
    form.locator("input[name=networks]").check()
    form.locator("button[type=submit]").click()

    row = page.locator("#instances tr", has_text="web-browser")
    expect(row).to_have_count(1)
    instance_id = row.get_attribute("data-id")
    assert instance_id
    status = row.locator("[data-field=status]")
    expect(status).to_have_text("BUILD")
    tab.screenshot("1-build")

    expect(status).to_have_text("ACTIVE", timeout=STATE_TIMEOUT_MS)
    expect(row.locator("[data-field=task_state]")).to_have_text("")
    tab.screenshot("2-active")
    assert_not_reloaded(page, loaded_at)
    seen = statuses_seen(page, instance_id)
    assert "BUILD" in seen and seen[-1] == "ACTIVE", seen  # the stream, not a reload
    with cloud.stack.client(cloud.alice) as alice:
        shown = ok(alice.get(f"/v1/instances/{instance_id}"))
        assert shown["status"] == "ACTIVE"
        assert shown["network_ids"] == [cloud.network["id"]]
        assert shown["image_id"] == cloud.image["id"]

    row.locator("button", has_text="Delete").click()
    expect(status).to_have_text("DELETED", timeout=STATE_TIMEOUT_MS)
    expect(row.locator("button", has_text="Delete")).to_have_count(0)
    tab.screenshot("3-deleted")
    assert_not_reloaded(page, loaded_at)
    seen = statuses_seen(page, instance_id)
    assert "DELETING" in seen and seen[-1] == "DELETED", seen
    with cloud.stack.client(cloud.alice) as alice:
        assert ok(alice.get(f"/v1/instances/{instance_id}"))["status"] == "DELETED"

    # After a reload the deleted instance is gone from the list.
    page.reload()
    expect(page.locator(f"#instance-{instance_id}")).to_have_count(0)
    assert not page.locator("#error").is_visible()


def test_a_refused_create_shows_the_reason_on_the_page(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab("alice")
    page = tab.page
    tab.sign_in(cloud.alice)
    tab.wait_live()
    mark_page(page)
    loaded_at = page.evaluate("window.tetsu.loadedAt")
    form = page.locator("#create-instance")
    # 256 characters: the browser lets it through (no maxlength on a filled value via
    # script), the API refuses it.
    form.locator("input[name=name]").evaluate("(input) => input.removeAttribute('maxlength')")
    form.locator("input[name=name]").fill("x" * 256)
    form.locator("button[type=submit]").click()
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("name:")
    expect(error).to_contain_text("invalid_input")
    tab.screenshot("refused")
    assert_not_reloaded(page, loaded_at)
    assert page.locator("#instances tr", has_text="xxxxxxxx").count() == 0


def test_a_member_never_sees_another_projects_instance(cloud: Cloud, open_tab: Any) -> None:
    bob_tab = open_tab("bob")
    bob_tab.sign_in(cloud.bob)
    bob_tab.wait_live()
    bob_page = bob_tab.page
    alice_tab = open_tab("alice")
    alice_tab.sign_in(cloud.alice)
    alice_tab.wait_live()

    with cloud.stack.client(cloud.alice) as alice:
        created = ok(
            alice.post(
                "/v1/instances",
                json={
                    "name": "alice-private",
                    "flavor": "bm.small",
                    "image": "debian-12",
                    "networks": [cloud.network["id"]],
                },
            ),
            202,
        )
        instance_id = created["id"]
        # Alice's page shows it arrive and become ACTIVE, live.
        alice_status = alice_tab.page.locator(f"#instance-{instance_id} [data-field=status]")
        expect(alice_status).to_have_text("ACTIVE", timeout=STATE_TIMEOUT_MS)
        alice_tab.screenshot("alice-sees-hers")

        # Bob's page, open the whole time, got nothing of it: no row, no event.
        assert bob_page.locator(f"#instance-{instance_id}").count() == 0
        assert "alice-private" not in bob_page.content()
        assert statuses_seen(bob_page, instance_id) == []
        bob_tab.screenshot("bob-sees-nothing")
        # Nor does a fresh load, nor the REST API with Bob's session cookie.
        bob_page.reload()
        assert "alice-private" not in bob_page.content()
        events = bob_page.request.get(
            f"{cloud.stack.endpoint}/v1/events", params={"object_id": instance_id}
        )
        assert events.status == 200 and events.json()["events"] == []
        shown = bob_page.request.get(f"{cloud.stack.endpoint}/v1/instances/{instance_id}")
        assert shown.status == 404
        refused = bob_page.request.get(f"{cloud.stack.endpoint}/ui/instances/{instance_id}/row")
        assert refused.status == 404

        ok(alice.delete(f"/v1/instances/{instance_id}"), 202)
        expect(alice_status).to_have_text("DELETED", timeout=STATE_TIMEOUT_MS)


def test_an_operator_follows_the_nodes_live(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab("admin")
    page = tab.page
    tab.sign_in(cloud.stack.admin_token)
    page.goto(f"{cloud.stack.endpoint}/ui/nodes")
    tab.wait_live()
    mark_page(page)
    loaded_at = page.evaluate("window.tetsu.loadedAt")
    node_id = cloud.node_ids[0]
    row = page.locator(f"#node-{node_id}")
    expect(row.locator("[data-field=provision_state]")).to_contain_text("available")

    # Another operator puts the node in maintenance over REST: the row follows.
    with cloud.stack.client() as admin:
        ok(
            admin.patch(
                f"/v1/nodes/{node_id}",
                json={"maintenance": True, "maintenance_reason": "disk swap"},
            )
        )
    expect(row.locator("[data-field=maintenance]")).to_have_text(
        "yes: disk swap", timeout=STATE_TIMEOUT_MS
    )
    expect(row.locator("button", has_text="End maintenance")).to_have_count(1)
    tab.screenshot("maintenance")
    # And this page takes it out again with its own button.
    row.locator("button", has_text="End maintenance").click()
    expect(row.locator("[data-field=maintenance]")).to_have_text("no", timeout=STATE_TIMEOUT_MS)
    with cloud.stack.client() as admin:
        assert ok(admin.get(f"/v1/nodes/{node_id}"))["maintenance"] is False
    assert_not_reloaded(page, loaded_at)

    # Enrolling a node with the form adds its row in place.
    form = page.locator("#enroll-node")
    form.locator("input[name=name]").fill("node-from-form")
    form.locator("input[name=cpus]").fill("8")
    form.locator("input[name=memory_mb]").fill("16384")
    form.locator("input[name=disk_gb]").fill("200")
    form.locator("textarea[name=driver_info]").fill('{"fake_delay": 0.2}')
    form.locator("textarea[name=macs]").fill("52:54:00:00:20:01")
    form.locator("button[type=submit]").click()
    new_row = page.locator("#nodes tr", has_text="node-from-form")
    expect(new_row.locator("[data-field=provision_state]")).to_contain_text("enroll")
    new_row.locator("button", has_text="Manage").click()
    expect(new_row.locator("[data-field=provision_state]")).to_contain_text(
        "manageable", timeout=STATE_TIMEOUT_MS
    )
    tab.screenshot("enrolled")
    assert_not_reloaded(page, loaded_at)

    # The node's own page lists its events, from /v1/events.
    page.goto(f"{cloud.stack.endpoint}/ui/nodes/{node_id}")
    history = page.locator("#node-events tr")
    expect(history.filter(has_text="tetsu.node.maintenance_set.end")).to_have_count(1)
    expect(history.filter(has_text="tetsu.node.maintenance_unset.end")).to_have_count(1)
    tab.screenshot("node-history")

    page.goto(f"{cloud.stack.endpoint}/ui/conductors")
    expect(page.locator("#conductor-conductor-1")).to_contain_text("alive")
    tab.screenshot("conductors")


def test_a_member_is_refused_the_operator_pages(cloud: Cloud, open_tab: Any) -> None:
    tab = open_tab("alice")
    tab.sign_in(cloud.alice)
    assert tab.page.locator("nav a", has_text="Nodes").count() == 0
    response = tab.page.goto(f"{cloud.stack.endpoint}/ui/nodes")
    assert response is not None and response.status == 403
    expect(tab.page.locator("#error")).to_contain_text("admin role")
