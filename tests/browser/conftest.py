"""Fixtures of the dashboard's browser tests: the four services on the real RabbitMQ and
PostgreSQL with fake nodes, a small cloud of two projects, and Debian's chromium driven by
Playwright (never a browser Playwright downloads). Screenshots go to ``$TETSU_ARTIFACTS``
(else ``build/test-artifacts``), under ``browser/``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.integration.conftest import amqp_url, create_database, drop_database  # noqa: F401
from tests.integration.stack import Stack, running_stack, wait_for

#: The machine may be busy (2 cores, other suites): generous waits for page steps; a
#: state change has its own timeout in the tests.
expect.set_options(timeout=20_000)
PAGE_TIMEOUT_MS = 60_000

CHROMIUM = Path(os.environ.get("TETSU_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
#: Seconds each fake ramdisk run takes: long enough for a page to show BUILD first.
FAKE_DELAY = 2.5
NODES = 2


def artifacts_dir() -> Path:
    base = Path(os.environ.get("TETSU_ARTIFACTS") or ROOT / "build" / "test-artifacts")
    folder = base / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> Any:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


@dataclass
class Cloud:
    """Two projects with a member each, a catalog, and available fake nodes."""

    stack: Stack
    alice: str  # token of a member of project acme
    bob: str  # token of a member of project other
    image: dict[str, Any]
    network: dict[str, Any]  # acme's
    node_ids: list[str]


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    name, url = create_database()
    workdir = tmp_path_factory.mktemp("browser-stack")
    try:
        with running_stack(workdir, database_url=url, transport_url=amqp_url) as running:
            yield running
    finally:
        drop_database(name)


def enroll(admin: httpx.Client, name: str, mac: str) -> str:
    node = ok(
        admin.post(
            "/v1/nodes",
            json={
                "name": name,
                "resource_class": "baremetal",
                "properties": {"cpus": 8, "memory_mb": 16384, "disk_gb": 200},
                "driver_info": {"fake_delay": FAKE_DELAY},
            },
        ),
        201,
    )
    ok(admin.post("/v1/ports", json={"address": mac, "node_id": node["id"]}), 201)
    ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "manage"}))
    ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "provide"}))
    return str(node["id"])


@pytest.fixture(scope="module")
def cloud(stack: Stack) -> Cloud:
    tokens = {}
    with stack.client() as admin:
        for user, project_name in (("alice", "acme"), ("bob", "other")):
            project = ok(admin.post("/v1/projects", json={"name": project_name}), 201)
            ok(
                admin.post(
                    "/v1/users",
                    json={
                        "name": user,
                        "password": f"{user}-password",
                        "project_id": project["id"],
                        "role": "member",
                    },
                ),
                201,
            )
            answer = httpx.post(
                f"{stack.endpoint}/v1/tokens",
                json={"name": user, "password": f"{user}-password"},
            )
            tokens[user] = ok(answer, 201)["token"]
        ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.small",
                    "resource_class": "baremetal",
                    "cpus": 4,
                    "memory_mb": 8192,
                    "disk_gb": 100,
                },
            ),
            201,
        )
        image = ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "debian-12",
                    "visibility": "public",
                    "source_url": "http://images.example/debian-12.raw",
                    "sha256": hashlib.sha256(b"image").hexdigest(),
                    "size": 5,
                },
            ),
            201,
        )
        node_ids = [enroll(admin, f"node-{i}", f"52:54:00:00:10:{i:02x}") for i in range(NODES)]

        def all_available() -> bool:
            nodes = admin.get("/v1/nodes", params={"provision_state": "available"}).json()
            return len(nodes["nodes"]) == NODES

        wait_for(all_available, timeout=60, what="the nodes available")
    with stack.client(tokens["alice"]) as alice:
        network = ok(alice.post("/v1/networks", json={"name": "acme-net"}), 201)
    return Cloud(stack, tokens["alice"], tokens["bob"], image, network, node_ids)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


class Tab:
    """A page in a browser context of its own (its own cookies), with the script errors
    and console lines it produced, and screenshots kept as artifacts."""

    def __init__(self, page: Page, endpoint: str, prefix: str) -> None:
        self.page = page
        self.endpoint = endpoint
        self.prefix = prefix
        self.errors: list[str] = []
        self.console: list[str] = []
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("dialog", lambda dialog: dialog.accept())

    def _console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.endpoint}/ui/login")
        self.page.fill("input[name=token]", token)
        self.page.click("#login button[type=submit]")
        self.page.wait_for_url(f"{self.endpoint}/ui/")

    def wait_live(self) -> None:
        """Until the page's event stream is open (the page is current from then on)."""
        # (A locator, not wait_for_function: the pages' CSP forbids the eval that needs.)
        expect(self.page.locator("#live")).to_have_attribute("data-state", "on", timeout=30_000)

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{self.prefix}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def open_tab(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``open_tab(name)``: a new tab in a context of its own; after the test, it must have
    raised no script error."""
    tabs: list[Tab] = []

    def open_(name: str) -> Tab:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        tab = Tab(context.new_page(), stack.endpoint, f"{request.node.name}-{name}")
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        # The last state of every tab, whether the test passed or not.
        tab.screenshot("end")
        tab.page.context.close()
    for tab in tabs:
        assert not tab.errors, (tab.prefix, tab.errors, tab.console)
