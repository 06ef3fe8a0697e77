"""Boot interface ``pxe``: the node network-boots the deploy ramdisk through the conductor's
boot server.

``prepare_ramdisk`` writes an iPXE script for every MAC of the node (whichever NIC the
firmware boots from finds one) and tags those MACs ``tetsu`` in dnsmasq's host files;
``clean_up_ramdisk`` takes all of that away again, with the ramdisk's job. The boot
server itself (``/boot.ipxe``, the ramdisk files) runs with the conductor.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from libs.errors import BadRequest
from services.conductor.bootserver import (
    BootTree,
    DhcpHosts,
    hostsdir_for,
    ramdisk_script,
)

from .base import BootInterface, DriverEnv, DriverError

if TYPE_CHECKING:
    from services.conductor.task_manager import Task

LOG = logging.getLogger(__name__)


def job_url(boot_server_url: str, node_id: str) -> str:
    """Where the node's ramdisk fetches its job (``tetsu_job=`` on its command line)."""
    return f"{boot_server_url.rstrip('/')}/jobs/{node_id}"


class PXEBoot(BootInterface):
    def __init__(self, env: DriverEnv) -> None:
        super().__init__(env)
        settings = env.settings
        self.tree = BootTree(settings.boot_root)
        self.dhcp = DhcpHosts(hostsdir_for(self.tree.root, settings.dhcp_hostsdir))

    def validate(self, task: Task) -> None:
        if not self.env.settings.boot_server_url:
            raise BadRequest("pxe boot: the conductor has no boot_server_url")
        if not task.ports:
            raise BadRequest(
                f"pxe boot: node {task.node.id} has no port (its MAC is how it network-boots)"
            )

    def prepare_ramdisk(self, task: Task) -> None:
        url = self._boot_server_url()
        node_id = task.node.id
        script = ramdisk_script(url, self.env.settings.ramdisk_kernel_params, job_url(url, node_id))
        try:
            # A job left over from an earlier run must not be what the new ramdisk finds:
            # its token is spent. The deploy interface writes the new one.
            self.tree.remove_job(node_id)
            for port in task.ports:
                self.tree.write_ipxe_script(port.address, script)
                self.dhcp.add(port.address)
        except (OSError, ValueError) as exc:
            raise DriverError(f"writing the network boot files failed: {exc}") from exc
        LOG.info(
            "node %s: network boot of the ramdisk prepared (%d MAC(s))", node_id, len(task.ports)
        )

    def clean_up_ramdisk(self, task: Task) -> None:
        node_id = task.node.id
        try:
            for port in task.ports:
                self.dhcp.remove(port.address)
                self.tree.remove_ipxe_script(port.address)
            self.tree.remove_job(node_id)
        except (OSError, ValueError) as exc:
            raise DriverError(f"removing the network boot files failed: {exc}") from exc
        LOG.debug("node %s: network boot files removed", node_id)

    def _boot_server_url(self) -> str:
        url = self.env.settings.boot_server_url
        if not url:
            raise DriverError("the conductor has no boot_server_url")
        return url
