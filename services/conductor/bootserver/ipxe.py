"""The iPXE scripts machines run: the generic ``/boot.ipxe`` every tagged machine gets from
DHCP, and the per-MAC script that boots the deploy ramdisk."""

from __future__ import annotations


def boot_script(boot_server_url: str | None) -> str:
    """``/boot.ipxe``: run this machine's own script if it has one, else leave iPXE so the
    firmware boots the next device (the disk). Without a URL the path is relative, which
    iPXE resolves against the URL it fetched this script from."""
    prefix = boot_server_url.rstrip("/") if boot_server_url else ""
    return (
        "#!ipxe\n"
        "# tetsu: this machine's ramdisk script if it is being deployed or cleaned\n"
        f"chain {prefix}/ipxe/${{mac:hexhyp}}.ipxe || exit\n"
    )


def ramdisk_script(boot_server_url: str, kernel_params: str, job_url: str) -> str:
    """``/ipxe/<mac>.ipxe``: boot the deploy ramdisk, telling it where its job is."""
    url = boot_server_url.rstrip("/")
    params = " ".join([*kernel_params.split(), f"tetsu_job={job_url}"])
    return f"#!ipxe\nkernel {url}/ramdisk/vmlinuz {params}\ninitrd {url}/ramdisk/initramfs\nboot\n"
