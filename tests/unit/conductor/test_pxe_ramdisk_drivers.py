"""The ``pxe`` boot and ``ramdisk`` deploy interfaces: the files they write for a node on
the boot server (iPXE scripts, DHCP host files, the ramdisk's job, the image), and a
deploy through the conductor that waits for the ramdisk's callback."""

from __future__ import annotations

import hashlib
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.db import Image, ImageStatus, InstanceStatus
from libs.errors import BadRequest
from libs.rpc import RequestContext
from services.conductor.bootserver import BootHTTPServer, BootTree, DhcpHosts
from services.conductor.drivers import DriverEnv, DriverError, DriverFactory
from services.conductor.settings import ConductorSettings
from services.conductor.task_manager import Task, TaskManager
from tests.unit.conductor.conftest import HOST, Cloud, make_settings, wait_for

BOOT_URL = "http://10.77.0.254:8080"
API_URL = "http://10.77.0.254:8000"
TOKEN = "tok-" + "x" * 40


def pxe_settings(tmp_path: Path, **overrides: Any) -> ConductorSettings:
    values: dict[str, Any] = {
        "enabled_boot_interfaces": ["fake", "pxe"],
        "enabled_deploy_interfaces": ["fake", "ramdisk"],
        "boot_root": tmp_path / "boot",
        "boot_server_url": BOOT_URL,
        "callback_url": API_URL,
        "ramdisk_kernel_params": "console=ttyS0,115200 quiet",
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> ConductorSettings:
    return pxe_settings(tmp_path)


def task_manager(cloud: Cloud, settings: ConductorSettings) -> TaskManager:
    """Tasks whose drivers are those ``settings`` enable, reading ``cloud``'s database."""
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None, cloud.db))
    return TaskManager(cloud.db, HOST, factory, workers=1)


@pytest.fixture
def tasks(cloud: Cloud, settings: ConductorSettings) -> Iterator[TaskManager]:
    manager = task_manager(cloud, settings)
    yield manager
    manager.shutdown(5.0)


def pxe_node(cloud: Cloud, ports: int = 2) -> str:
    return cloud.make_node(ports=ports, boot_interface="pxe", deploy_interface="ramdisk")


def make_image(cloud: Cloud, data: bytes, **fields: Any) -> Image:
    with cloud.db.session() as session:
        image = Image(
            name=fields.pop("name", "debian-12"),
            project_id=cloud.project_id,
            status=ImageStatus.ACTIVE,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            **fields,
        )
        session.add(image)
        session.flush()
        session.refresh(image)
        session.expunge(image)
        return image


def claimed_instance(cloud: Cloud, node_id: str, image: Image) -> str:
    cloud.image_id = image.id
    return cloud.make_instance(node_id)


def read_job(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


class ImageSource:
    """A plain HTTP server for an image's source_url, counting the downloads."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.requests.append(self.path)
                body = source.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source() -> Iterator[ImageSource]:
    server = ImageSource({})
    yield server
    server.close()


def acquire(tasks: TaskManager, node_id: str) -> Any:
    return tasks.acquire(RequestContext.admin(), node_id, "test")


def with_token(task: Task) -> Task:
    task.callback_token = TOKEN
    return task


# --- pxe boot ------------------------------------------------------------------------------


def test_pxe_needs_a_boot_server_url_and_a_port(cloud: Cloud, tmp_path: Path) -> None:
    node_id = pxe_node(cloud)
    portless = pxe_node(cloud, ports=0)
    for settings, node, reason in [
        (pxe_settings(tmp_path, boot_server_url=None), node_id, "no boot_server_url"),
        (pxe_settings(tmp_path), portless, "has no port"),
    ]:
        manager = task_manager(cloud, settings)
        with (
            manager.acquire(RequestContext.admin(), node, "test", shared=True) as task,
            pytest.raises(BadRequest, match=reason),
        ):
            task.driver.boot.validate(task)
        manager.shutdown(1.0)


def test_prepare_ramdisk_writes_a_script_and_a_dhcp_tag_for_every_mac(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings
) -> None:
    node_id = pxe_node(cloud, ports=2)
    tree = BootTree(settings.boot_root)
    tree.write_job(node_id, "action=deploy\ntoken=spent-token\n")  # from an earlier run

    with acquire(tasks, node_id) as task:
        task.driver.boot.validate(task)
        task.driver.boot.prepare_ramdisk(with_token(task))
        macs = [port.address for port in task.ports]

    assert len(macs) == 2
    for mac in macs:
        script = (settings.boot_root / "ipxe" / f"{mac.replace(':', '-')}.ipxe").read_text()
        assert script.splitlines() == [
            "#!ipxe",
            f"kernel {BOOT_URL}/ramdisk/vmlinuz console=ttyS0,115200 quiet "
            f"tetsu_job={BOOT_URL}/jobs/{node_id}",
            f"initrd {BOOT_URL}/ramdisk/initramfs",
            "boot",
        ]
        host_file = settings.boot_root / "dhcp-hosts" / mac
        assert host_file.read_text() == f"{mac},set:tetsu\n"
    # The ramdisk must never find the earlier run's job (its token is spent).
    assert not tree.job(node_id).exists()


def test_clean_up_ramdisk_takes_the_node_off_network_boot(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings
) -> None:
    node_id = pxe_node(cloud, ports=2)
    tree = BootTree(settings.boot_root)
    hosts = DhcpHosts(settings.boot_root / "dhcp-hosts")
    with acquire(tasks, node_id) as task:
        task.driver.boot.prepare_ramdisk(with_token(task))
        tree.write_job(node_id, "action=clean\n")
        macs = [port.address for port in task.ports]

        task.driver.boot.clean_up_ramdisk(task)
        task.driver.boot.clean_up_ramdisk(task)  # idempotent: quiesce may repeat it

    assert list((settings.boot_root / "ipxe").iterdir()) == []
    assert not tree.job(node_id).exists()
    for mac in macs:
        assert not hosts.boots(mac)
        assert hosts.path(mac).read_text() == f"{mac},set:tetsu-off\n"


# --- ramdisk deploy --------------------------------------------------------------------------


def test_ramdisk_deploy_needs_a_callback_url_and_pxe(cloud: Cloud, tmp_path: Path) -> None:
    pxe = pxe_node(cloud)
    fake_boot = cloud.make_node(deploy_interface="ramdisk")
    for settings, node, reason in [
        (pxe_settings(tmp_path, callback_url=None), pxe, "no callback_url"),
        (pxe_settings(tmp_path), fake_boot, "needs boot interface 'pxe', the node has 'fake'"),
    ]:
        manager = task_manager(cloud, settings)
        with (
            manager.acquire(RequestContext.admin(), node, "test", shared=True) as task,
            pytest.raises(BadRequest, match=reason),
        ):
            task.driver.deploy.validate(task)
        manager.shutdown(1.0)


def test_deploy_of_an_uploaded_image_links_it_and_writes_the_job(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings, tmp_path: Path
) -> None:
    data = b"MBR" + bytes(4096)
    uploaded = tmp_path / "api-images" / "the-upload"
    uploaded.parent.mkdir()
    uploaded.write_bytes(data)
    image = make_image(cloud, data, file_path=str(uploaded))
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, image)

    with acquire(tasks, node_id) as task:
        task.driver.deploy.deploy(with_token(task))

    tree = BootTree(settings.boot_root)
    job_path = tree.job(node_id)
    assert stat.S_IMODE(job_path.stat().st_mode) == 0o600  # it holds the token
    assert read_job(job_path) == {
        "action": "deploy",
        "node_id": node_id,
        "callback_url": f"{API_URL}/v1/nodes/{node_id}/callback",
        "token": TOKEN,
        "image_url": f"{BOOT_URL}/images/{image.id}",
        "image_size": str(len(data)),
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "after": "poweroff",
    }
    # What the ramdisk fetches: the job and the image, through the real HTTP server.
    http = BootHTTPServer(tree.root, "127.0.0.1", 0)
    http.start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        written = job_path.read_text()
        assert httpx.get(f"{base}/jobs/{node_id}").text == written
        assert httpx.get(f"{base}/images/{image.id}").content == data
    finally:
        http.stop()
    assert tree.image(image.id).resolve() == uploaded  # a link, not a copy


def test_deploy_of_a_url_image_downloads_it_once(
    cloud: Cloud,
    tasks: TaskManager,
    settings: ConductorSettings,
    source: ImageSource,
) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    source.files["/images/debian.raw"] = data
    image = make_image(cloud, data, source_url=source.url("/images/debian.raw"))
    first, second = pxe_node(cloud), pxe_node(cloud)
    claimed_instance(cloud, first, image)
    claimed_instance(cloud, second, image)

    for node_id in (first, second):
        with acquire(tasks, node_id) as task:
            task.driver.deploy.deploy(with_token(task))
        job = read_job(BootTree(settings.boot_root).job(node_id))
        assert job["image_url"] == f"{BOOT_URL}/images/{image.id}"
        assert job["image_size"] == str(len(data))

    cached = BootTree(settings.boot_root).image(image.id)
    assert not cached.is_symlink()
    assert cached.read_bytes() == data
    assert source.requests == ["/images/debian.raw"]  # the second deploy used the copy
    assert [p.name for p in cached.parent.iterdir()] == [image.id]  # no partial file left


def test_prepare_downloads_the_image_before_the_job_exists(
    cloud: Cloud,
    tasks: TaskManager,
    settings: ConductorSettings,
    source: ImageSource,
) -> None:
    data = b"x" * 4096
    source.files["/images/early.raw"] = data
    image = make_image(cloud, data, source_url=source.url("/images/early.raw"))
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, image)
    tree = BootTree(settings.boot_root)

    with acquire(tasks, node_id) as task:
        task.driver.deploy.prepare(task)  # no callback token needed yet
    assert tree.image(image.id).read_bytes() == data
    assert not tree.job(node_id).exists()  # the ramdisk is not told anything yet
    with acquire(tasks, node_id) as task:
        task.driver.deploy.deploy(with_token(task))
    assert tree.job(node_id).exists()
    assert source.requests == ["/images/early.raw"]  # deploy() reused the prepared copy


def test_a_url_image_that_cannot_be_downloaded_fails_without_quoting_secrets(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings, source: ImageSource
) -> None:
    url = source.url("/missing.raw?sig=SIGNATURE", userinfo="user:PASSWORD@")
    image = make_image(cloud, b"data", name="gone", source_url=url)
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, image)

    with acquire(tasks, node_id) as task, pytest.raises(DriverError) as caught:
        task.driver.deploy.deploy(with_token(task))

    reason = caught.value.reason
    assert reason.startswith("downloading image gone from http://127.0.0.1:")
    assert reason.endswith("/missing.raw failed: HTTP 404")
    assert "PASSWORD" not in reason and "SIGNATURE" not in reason
    assert not BootTree(settings.boot_root).job(node_id).exists()
    assert list(BootTree(settings.boot_root).images.iterdir()) == []


def test_a_url_image_of_the_wrong_size_is_not_published(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings, source: ImageSource
) -> None:
    source.files["/short.raw"] = b"only part of it"
    image = make_image(cloud, b"the whole image, longer", source_url=source.url("/short.raw"))
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, image)

    with acquire(tasks, node_id) as task, pytest.raises(DriverError, match="has 15 bytes"):
        task.driver.deploy.deploy(with_token(task))

    assert list(BootTree(settings.boot_root).images.iterdir()) == []


def test_a_url_image_with_the_wrong_checksum_fails_prepare_and_is_not_cached(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings, source: ImageSource
) -> None:
    good = b"the image as registered"
    source.files["/changed.raw"] = b"the image, replaced!!!!"  # same size, other bytes
    image = make_image(cloud, good, name="changed", source_url=source.url("/changed.raw"))
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, image)
    got = hashlib.sha256(source.files["/changed.raw"]).hexdigest()

    for _ in range(2):  # nothing cached: the second try downloads (and checks) again
        with acquire(tasks, node_id) as task, pytest.raises(DriverError) as caught:
            task.driver.deploy.prepare(task)
        assert caught.value.reason == (
            f"image changed at {source.url('/changed.raw')}: checksum mismatch: "
            f"expected {image.sha256}, got {got}"
        )
        assert list(BootTree(settings.boot_root).images.iterdir()) == []
    assert len(source.requests) == 2


def test_an_image_without_reachable_data_fails_the_deploy(
    cloud: Cloud, tasks: TaskManager, tmp_path: Path
) -> None:
    elsewhere = make_image(cloud, b"x", name="elsewhere", file_path=str(tmp_path / "not-here"))
    node_id = pxe_node(cloud)
    claimed_instance(cloud, node_id, elsewhere)

    with acquire(tasks, node_id) as task, pytest.raises(DriverError) as caught:
        task.driver.deploy.deploy(with_token(task))
    assert caught.value.reason == (
        "image elsewhere has no data this conductor can reach "
        "(its uploaded file is not on this conductor's host)"
    )


def test_deploy_without_a_callback_token_writes_no_job(
    cloud: Cloud, tasks: TaskManager, settings: ConductorSettings
) -> None:
    node_id = pxe_node(cloud)
    with acquire(tasks, node_id) as task, pytest.raises(DriverError, match="no callback token"):
        task.driver.deploy.deploy(task)
    assert not BootTree(settings.boot_root).job(node_id).exists()


def test_clean_writes_a_wipe_job(cloud: Cloud, cleaning_tasks: TaskManager, tmp_path: Path) -> None:
    node_id = pxe_node(cloud)
    with acquire(cleaning_tasks, node_id) as task:
        task.driver.deploy.clean(with_token(task))

    job_path = BootTree(tmp_path / "boot").job(node_id)
    assert stat.S_IMODE(job_path.stat().st_mode) == 0o600
    assert read_job(job_path) == {
        "action": "clean",
        "node_id": node_id,
        "callback_url": f"{API_URL}/v1/nodes/{node_id}/callback",
        "token": TOKEN,
        "wipe": "full",
        "after": "poweroff",
    }


@pytest.fixture
def cleaning_tasks(cloud: Cloud, tmp_path: Path) -> Iterator[TaskManager]:
    manager = task_manager(cloud, pxe_settings(tmp_path, clean_wipe="full"))
    yield manager
    manager.shutdown(5.0)


# --- through the conductor ---------------------------------------------------------------------


def test_a_deploy_waits_for_the_ramdisk_then_takes_the_node_off_network_boot(
    cloud: Cloud, tmp_path: Path
) -> None:
    kernel, initramfs = tmp_path / "vmlinuz", tmp_path / "initramfs"
    kernel.write_bytes(b"kernel")
    initramfs.write_bytes(b"initramfs")
    settings = pxe_settings(
        tmp_path,
        boot_server_host="127.0.0.1",
        boot_server_port=0,
        tftp_port=0,
        ramdisk_kernel=kernel,
        ramdisk_initramfs=initramfs,
    )
    service = cloud.start_conductor(**settings.model_dump(exclude={"hostname", "workers"}))
    assert service.boot_server is not None
    base = f"http://127.0.0.1:{service.boot_server.port}"
    data = b"disk image" * 100
    uploaded = tmp_path / "upload"
    uploaded.write_bytes(data)
    node_id = pxe_node(cloud, ports=1)
    instance_id = claimed_instance(cloud, node_id, make_image(cloud, data, file_path=str(uploaded)))
    mac = cloud.ports(node_id)[0].address.replace(":", "-")

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    cloud.settled(node_id, "wait call-back")
    # What the machine fetches, in order: its script, then its job, then the image.
    script = httpx.get(f"{base}/ipxe/{mac}.ipxe").text
    assert f"tetsu_job={BOOT_URL}/jobs/{node_id}" in script
    job = dict(line.split("=", 1) for line in httpx.get(f"{base}/jobs/{node_id}").text.splitlines())
    assert job["action"] == "deploy"
    assert httpx.get(f"{base}/images/{job['image_url'].rsplit('/', 1)[1]}").content == data

    cloud.api.ramdisk_callback(cloud.ctxt, node_id, True, None)  # the API checked the token

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    assert httpx.get(f"{base}/ipxe/{mac}.ipxe").status_code == 404
    assert httpx.get(f"{base}/jobs/{node_id}").status_code == 404
    assert not DhcpHosts(settings.boot_root / "dhcp-hosts").boots(mac)
