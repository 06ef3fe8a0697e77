"""The conductor's boot server: the files a network-booting machine fetches (iPXE scripts,
the deploy ramdisk, its job, the image), served over HTTP and TFTP, and the DHCP host
files that tell the operator's dnsmasq which machines to boot. docs/baremetal.md is the
contract of its paths and formats.
"""

from __future__ import annotations

from .dhcp import DhcpHosts, dnsmasq_config, hostsdir_for
from .http import BootHTTPServer
from .ipxe import boot_script, ramdisk_script
from .job import clean_job, deploy_job
from .server import BootServer, BootServerError
from .tftp import TFTPServer
from .tree import BootTree, mac_name

__all__ = [
    "BootHTTPServer",
    "BootServer",
    "BootServerError",
    "BootTree",
    "DhcpHosts",
    "TFTPServer",
    "boot_script",
    "clean_job",
    "deploy_job",
    "dnsmasq_config",
    "hostsdir_for",
    "mac_name",
    "ramdisk_script",
]
