"""Deploy interface ``ramdisk``: tetsu's own deploy ramdisk writes the image, or wipes the
disks, and reports to the API's callback endpoint.

The conductor's part is to publish what the ramdisk needs on the boot server: the image at
``/images/<image_id>`` (a link to the API's uploaded file, or a download of the image's
``source_url`` cached there) and the job at ``/jobs/<node_id>`` (docs/baremetal.md). A
download is checked against the image's sha256 before it is cached; the ramdisk checks
the checksum again against what it wrote to the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from libs.db import Image, Instance
from libs.errors import BadRequest
from services.conductor.bootserver import BootTree, clean_job, deploy_job

from .base import DeployInterface, DriverEnv, DriverError

if TYPE_CHECKING:
    from services.conductor.task_manager import Task

LOG = logging.getLogger(__name__)

BOOT_INTERFACE = "pxe"  # the only way the ramdisk gets booted
DOWNLOAD_CHUNK = 1024 * 1024
DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, read=120.0)


def callback_url_of(api_url: str, node_id: str) -> str:
    """The API endpoint the node's ramdisk reports to."""
    return f"{api_url.rstrip('/')}/v1/nodes/{node_id}/callback"


def shown_url(url: str) -> str:
    """``url`` without user, password or query: what may appear in an error."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class RamdiskDeploy(DeployInterface):
    def __init__(self, env: DriverEnv) -> None:
        super().__init__(env)
        self.tree = BootTree(env.settings.boot_root)
        # One download per image at a time: two nodes deploying it share the cached copy.
        self._download_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def validate(self, task: Task) -> None:
        settings = self.env.settings
        if not settings.callback_url:
            raise BadRequest("ramdisk deploy: the conductor has no callback_url")
        if not settings.boot_server_url:
            raise BadRequest("ramdisk deploy: the conductor has no boot_server_url")
        if task.node.boot_interface != BOOT_INTERFACE:
            raise BadRequest(
                f"ramdisk deploy: needs boot interface {BOOT_INTERFACE!r}, "
                f"the node has {task.node.boot_interface!r}"
            )

    def prepare(self, task: Task) -> None:
        """Publish the instance's image on the boot server (a download of a large
        ``source_url`` image happens here, before the machine boots and waits for it)."""
        self._publish(self._deployable_image(task))

    def deploy(self, task: Task) -> None:
        node_id = task.node.id
        token = self._token(task, "deploy")
        image = self._deployable_image(task)
        self._publish(image)  # a no-op when prepare() did it: the link or copy is there
        assert image.size is not None and image.sha256 is not None
        try:
            job = deploy_job(
                node_id=node_id,
                callback_url=callback_url_of(self._setting("callback_url"), node_id),
                token=token,
                image_url=f"{self._setting('boot_server_url').rstrip('/')}/images/{image.id}",
                image_size=image.size,
                image_sha256=image.sha256.lower(),
            )
        except ValueError as exc:
            raise DriverError(f"cannot write the deploy job: {exc}") from exc
        self._write_job(node_id, job)
        LOG.info("node %s: deploy job written (image %s)", node_id, image.id)

    def clean(self, task: Task) -> None:
        node_id = task.node.id
        token = self._token(task, "cleaning")
        try:
            job = clean_job(
                node_id=node_id,
                callback_url=callback_url_of(self._setting("callback_url"), node_id),
                token=token,
                wipe=self.env.settings.clean_wipe,
            )
        except ValueError as exc:
            raise DriverError(f"cannot write the cleaning job: {exc}") from exc
        self._write_job(node_id, job)
        LOG.info("node %s: cleaning job written (%s wipe)", node_id, self.env.settings.clean_wipe)

    def _setting(self, name: str) -> str:
        value = getattr(self.env.settings, name)
        if not value:
            raise DriverError(f"the conductor has no {name}")
        return str(value)

    @staticmethod
    def _token(task: Task, work: str) -> str:
        if task.callback_token is None:
            raise DriverError(f"no callback token for the ramdisk's {work}")
        return task.callback_token

    def _write_job(self, node_id: str, job: str) -> None:
        try:
            self.tree.write_job(node_id, job)
        except OSError as exc:
            raise DriverError(f"writing the ramdisk's job failed: {exc}") from exc

    def _deployable_image(self, task: Task) -> Image:
        image = self._image_of(task)
        if image.size is None or image.sha256 is None:
            raise DriverError(f"image {image.name} has no data yet (status {image.status})")
        return image

    def _image_of(self, task: Task) -> Image:
        """The image of the instance the node is claimed for."""
        db = self.env.db
        if db is None:
            raise DriverError("the ramdisk deploy has no database to find the image in")
        instance_id = task.node.instance_id
        if instance_id is None:
            raise DriverError(f"node {task.node.id} has no instance to deploy")
        with db.session() as session:
            instance = session.get(Instance, instance_id)
            if instance is None:
                raise DriverError(f"instance {instance_id} no longer exists")
            image = session.get(Image, instance.image_id)
            if image is None:
                raise DriverError(f"image {instance.image_id} of the instance no longer exists")
            return image

    def _publish(self, image: Image) -> None:
        """Make ``/images/<image_id>`` serve the image's data."""
        if image.file_path:
            uploaded = Path(image.file_path).absolute()
            if uploaded.is_file():
                self._link(image, uploaded)
                return
        if image.source_url:
            self._download(image, image.source_url)
            return
        where = " (its uploaded file is not on this conductor's host)" if image.file_path else ""
        raise DriverError(f"image {image.name} has no data this conductor can reach{where}")

    def _link(self, image: Image, uploaded: Path) -> None:
        try:
            self.tree.link_image(image.id, uploaded)
        except OSError as exc:
            raise DriverError(f"publishing image {image.name} failed: {exc}") from exc

    def _download(self, image: Image, url: str) -> None:
        """Download ``url`` to ``/images/<image_id>`` unless a copy of the image's size is
        there already (a partial or corrupt download never is: it is renamed into place at
        the end, once its size and sha256 are the image's)."""
        target = self.tree.image(image.id)
        with self._download_lock(image.id):
            if _is_cached(target, image.size):
                LOG.debug("image %s: using the cached download", image.id)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
            try:
                size, sha256 = _fetch(url, partial, image.name)
                if image.size is not None and size != image.size:
                    raise DriverError(
                        f"image {image.name} at {shown_url(url)} has {size} bytes, "
                        f"not the {image.size} the image says"
                    )
                expected = (image.sha256 or "").lower()
                if expected and sha256 != expected:
                    # Not cached: the next deploy downloads it again (the source may be
                    # fixed by then), and no machine is given data that is not the image.
                    raise DriverError(
                        f"image {image.name} at {shown_url(url)}: checksum mismatch: "
                        f"expected {expected}, got {sha256}"
                    )
                os.replace(partial, target)
            except OSError as exc:
                raise DriverError(f"storing image {image.name} failed: {exc}") from exc
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
            LOG.info("image %s: downloaded %d bytes from %s", image.id, size, shown_url(url))

    def _download_lock(self, image_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._download_locks.setdefault(image_id, threading.Lock())


def _is_cached(path: Path, size: int | None) -> bool:
    # A link is the API's file published earlier, not a download of the source URL.
    if path.is_symlink() or not path.is_file():
        return False
    return size is None or path.stat().st_size == size


def _fetch(url: str, destination: Path, name: str) -> tuple[int, str]:
    """Stream ``url`` into ``destination``; the number of bytes written and their sha256
    (hashed on the way: an image can be far larger than memory and slow to read twice)."""
    shown = shown_url(url)
    written = 0
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DriverError(
                    f"downloading image {name} from {shown} failed: HTTP {response.status_code}"
                )
            with open(destination, "wb") as out:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
    except httpx.HTTPError as exc:
        # httpx's text may quote the URL, whose user, password or query can be secret.
        reason = str(exc).replace(url, shown) or type(exc).__name__
        raise DriverError(f"downloading image {name} from {shown} failed: {reason}") from exc
    return written, digest.hexdigest()
