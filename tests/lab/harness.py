"""The bare-metal lab: QEMU guests (TCG) behind virtualbmc BMCs, on a userspace Open vSwitch
bridge, with dnsmasq in a network namespace of the lab's own.

```
 guests (libvirt, TCG), tap tlab<id>-g<n> ──┐
                                            │ OVS bridge tlab<id> (netdev datapath): a learning
                                            │ switch, or OpenFlow 1.3 from netctl (secure mode)
 root ns: tlab<id> internal port 10.77.0.254/24 ── API + conductor boot server listen here
                                            │
 netns tetsu-lab-<id>: lab0 10.77.0.1/24 + fd77::1/64 ── dnsmasq (DHCP, IPv6 RA)
 vbmcd: one IPMI BMC per guest on 127.0.0.1:<port> ── libvirt ── the guest
```

Everything is made fresh (leftovers of an earlier, killed run are removed first) and torn
down afterwards; daemons the lab needs (libvirtd, virtlogd, Open vSwitch) are started when
they are not running and left running, like the machine's other services. One lab runs on
a machine at a time: a lab holds an exclusive lock (``LOCK_FILE``) for its lifetime, and
another waits for it, so what looks like a leftover is never a lab that is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.conductor.bootserver import dnsmasq_config

ROOT = Path(__file__).resolve().parents[2]
LAB_VENV = Path(os.environ.get("TETSU_LAB_VENV", ROOT / ".venv-lab"))

SUBNET_PREFIX = "10.77.0"
HOST_IP = f"{SUBNET_PREFIX}.254"  # the root namespace's address on the lab network
DNSMASQ_IP = f"{SUBNET_PREFIX}.1"
IPV6_PREFIX = "fd77::"
NAME_PREFIX = "tetsu-lab"
BRIDGE_PREFIX = "tlab"
FIRST_BMC_PORT = 6230

LIBVIRT_URI = "qemu:///system"
QEMU_CONF = textwrap.dedent(
    """\
    # Written by tetsu's lab harness: QEMU as root, no namespaces or cgroups (a container).
    user = "root"
    group = "root"
    security_driver = "none"
    namespaces = []
    cgroup_controllers = []
    """
)

INSTALL_HINT = "run ./scripts/test once (it installs the lab's packages), or see docs/lab.md"

LOCK_FILE = Path(os.environ.get("TETSU_LAB_LOCK", "/run/tetsu-lab.lock"))
LOCK_WAIT = 900.0  # seconds to wait for a lab that is running (a full lab run takes ~2 min)
#: Options whose value is a secret: masked in the text of a failed command.
SECRET_OPTIONS = frozenset({"--password"})


class LabError(RuntimeError):
    """The lab could not be set up on this machine."""


def run(
    *args: str, check: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        raise LabError(_masked(args, f"{' '.join(args)} timed out after {timeout:g} s")) from None
    if check and result.returncode != 0:
        raise LabError(
            _masked(
                args,
                f"{' '.join(args)} failed (rc {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}",
            )
        )
    return result


def _masked(args: Sequence[str], text: str) -> str:
    """``text`` without the values of ``args``' secret options (vbmc takes the BMC's
    password on its command line), wherever they appear."""
    for option, value in itertools.pairwise(args):
        if option in SECRET_OPTIONS and value:
            text = text.replace(value, "***")
    return text


def netns(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", namespace, *args, check=check)


# -- the machine's daemons ---------------------------------------------------------------


def check_prerequisites() -> None:
    """Fail with what is missing (the lab tests are never skipped)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, Open vSwitch, libvirt)")
    missing = [
        tool
        for tool in (
            "qemu-system-x86_64",
            "libvirtd",
            "virsh",
            "ovs-vsctl",
            "dnsmasq",
            "ipmitool",
            "ip",
            "ethtool",
        )
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if not (LAB_VENV / "bin" / "vbmcd").exists():
        missing.append(f"virtualbmc in {LAB_VENV}")
    if missing:
        raise LabError(f"missing {', '.join(missing)}: {INSTALL_HINT}")


def ensure_libvirtd() -> None:
    """libvirtd (and virtlogd) answering on qemu:///system, configured to run QEMU as root."""
    if run("virsh", "-c", LIBVIRT_URI, "version", check=False, timeout=20).returncode == 0:
        return
    for folder in ("/var/log/libvirt/qemu", "/var/lib/libvirt", "/run/libvirt"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    for group in ("kvm", "libvirt-qemu"):
        if run("getent", "group", group, check=False).returncode != 0:
            run("groupadd", group)
    if run("id", "libvirt-qemu", check=False).returncode != 0:
        run("useradd", "-g", "libvirt-qemu", "libvirt-qemu")
    conf = Path("/etc/libvirt/qemu.conf")
    if not conf.exists() or 'security_driver = "none"' not in conf.read_text():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(QEMU_CONF)
    run("virtlogd", "-d", check=False)
    run("libvirtd", "-d")
    deadline = time.monotonic() + 30
    while run("virsh", "-c", LIBVIRT_URI, "version", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError("libvirtd did not answer within 30 s")
        time.sleep(0.5)


def ensure_openvswitch() -> None:
    """ovsdb-server and ovs-vswitchd running (userspace datapath: no kernel module here)."""
    if run("ovs-vsctl", "--timeout=5", "show", check=False).returncode == 0:
        return
    ctl = "/usr/share/openvswitch/scripts/ovs-ctl"
    run(ctl, "start", "--system-id=random", check=False, timeout=120)
    if run("ovs-vsctl", "--timeout=10", "show", check=False).returncode != 0:
        raise LabError("Open vSwitch did not start (ovs-ctl start)")


@contextlib.contextmanager
def exclusive(lock_file: Path = LOCK_FILE, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the machine's lab lock: wait up to ``wait`` seconds for a lab that runs now.
    The kernel drops the lock when its holder dies, so a killed run leaves none behind."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = lock_file.read_text().strip() or "unknown"
                    raise LabError(
                        f"another lab (pid {holder}) has held {lock_file} for over {wait:.0f} s"
                    ) from None
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale() -> None:
    """Remove what an earlier run that was killed left behind (same names, same subnet).
    Only under the lab lock (:func:`exclusive`): a lab that runs holds it."""
    domains = run("virsh", "-c", LIBVIRT_URI, "list", "--all", "--name", check=False).stdout
    for name in domains.split():
        if name.startswith(NAME_PREFIX):
            run("virsh", "-c", LIBVIRT_URI, "destroy", name, check=False)
            run("virsh", "-c", LIBVIRT_URI, "undefine", name, "--nvram", check=False)
    for name in run("ip", "netns", "list", check=False).stdout.split():
        if name.startswith(NAME_PREFIX):
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "delete", name, check=False)
    for bridge in run("ovs-vsctl", "list-br", check=False).stdout.split():
        if bridge.startswith(BRIDGE_PREFIX):
            run("ovs-vsctl", "--if-exists", "del-br", bridge, check=False)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(BRIDGE_PREFIX):
            run("ip", "link", "delete", name, check=False)


# -- the lab ------------------------------------------------------------------------------


@dataclass
class Guest:
    """One "physical" machine: a libvirt domain behind its own IPMI BMC."""

    index: int
    name: str
    mac: str
    ipmi_port: int
    disk: Path
    serial_log: Path
    ipmi_username: str
    ipmi_password: str
    #: The name of its NIC's switch port (the tap libvirt makes at every power on, named
    #: so it stays the same, like a cable in a physical switch's port).
    tap: str = ""

    @property
    def driver_info(self) -> dict[str, object]:
        return {
            "ipmi_address": "127.0.0.1",
            "ipmi_port": self.ipmi_port,
            "ipmi_username": self.ipmi_username,
            "ipmi_password": self.ipmi_password,
        }

    @property
    def node_request(self) -> dict[str, object]:
        """The body of ``POST /v1/nodes`` that enrolls this guest as a real machine."""
        return {
            "name": self.name,
            "resource_class": "baremetal",
            "properties": {"cpus": 1, "memory_mb": 384, "disk_gb": 0},
            "power_interface": "ipmi",
            "management_interface": "ipmi",
            "boot_interface": "pxe",
            "deploy_interface": "ramdisk",
            "driver_info": self.driver_info,
        }

    def port_request(self, node_id: str, switch_id: str | None = None) -> dict[str, object]:
        """The body of ``POST /v1/ports`` for this guest's NIC, with its switch attachment
        when ``switch_id`` (the lab bridge's datapath id) is given."""
        body: dict[str, object] = {"address": self.mac, "node_id": node_id}
        if switch_id is not None:
            body |= {"switch_id": switch_id, "switch_port": self.tap}
        return body

    def ipmitool(self, *args: str, check: bool = True) -> str:
        """An independent IPMI client's answer (to cross-check what tetsu did)."""
        result = run(
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.ipmi_port),
            "-U",
            self.ipmi_username,
            "-E",  # the password from IPMI_PASSWORD, not the command line
            *args,
            check=check,
            env={**os.environ, "IPMI_PASSWORD": self.ipmi_password},
        )
        return result.stdout.strip()

    def power_status(self) -> str:
        """``on`` or ``off`` as ipmitool reads it from the BMC."""
        return self.ipmitool("power", "status").rsplit(" ", 1)[-1]

    def domain_state(self) -> str:
        return run("virsh", "-c", LIBVIRT_URI, "domstate", self.name).stdout.strip()

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_mark(self) -> int:
        """Where the serial log ends now: look for what comes after with ``serial_since``."""
        try:
            return self.serial_log.stat().st_size
        except FileNotFoundError:
            return 0

    def serial_since(self, mark: int) -> str:
        try:
            with self.serial_log.open("rb") as handle:
                handle.seek(mark)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def disk_head(self, size: int = 512) -> bytes:
        with self.disk.open("rb") as handle:
            return handle.read(size)


@dataclass
class Lab:
    workdir: Path
    lab_id: str
    bridge: str
    namespace: str
    datapath_id: str = ""  # the bridge's, 16 hex digits
    guests: list[Guest] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _vbmc_env: dict[str, str] = field(default_factory=dict)

    @property
    def host_ip(self) -> str:
        return HOST_IP

    @property
    def provisioning_ports(self) -> list[str]:
        """The switch ports of the boot services, as netctl's ``provisioning_ports``: the
        bridge's own port (the API and the boot server in the root namespace) and the
        dnsmasq namespace's veth."""
        return [f"{self.datapath_id}:{self.bridge}", f"{self.datapath_id}:{self.bridge}-o"]

    # BMC control, for tests that break a BMC on purpose.
    def vbmc(self, *args: str, check: bool = True) -> str:
        return run(
            str(LAB_VENV / "bin" / "vbmc"), *args, env=self._vbmc_env, check=check, timeout=60
        ).stdout

    def stop_bmc(self, guest: Guest) -> None:
        self.vbmc("stop", guest.name)

    def start_bmc(self, guest: Guest) -> None:
        self.vbmc("start", guest.name)
        wait_until(
            lambda: guest.ipmitool("power", "status", check=False) != "",
            timeout=30,
            what=f"BMC of {guest.name}",
        )

    def dnsmasq_log(self) -> str:
        path = self.workdir / "dnsmasq.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition: object, *, timeout: float, what: str, interval: float = 0.3) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")


def boot_settings(
    *, boot_root: Path, boot_port: int, api_port: int, kernel: Path, initramfs: Path
) -> tuple[dict[str, str], str]:
    """The ``TETSU_*`` settings of a stack whose conductor deploys the lab's guests (the
    API and the boot server on the lab network), and the lab's dnsmasq configuration."""
    boot_url = f"http://{HOST_IP}:{boot_port}"
    hostsdir = boot_root / "dhcp-hosts"
    hostsdir.mkdir(parents=True, exist_ok=True)  # dnsmasq reads only a folder it saw at start
    env = {
        "TETSU_HOST": "0.0.0.0",  # the guests call the API back from the lab network
        "TETSU_ENABLED_POWER_INTERFACES": '["fake", "ipmi"]',
        "TETSU_ENABLED_MANAGEMENT_INTERFACES": '["fake", "ipmi"]',
        "TETSU_ENABLED_BOOT_INTERFACES": '["fake", "pxe"]',
        "TETSU_ENABLED_DEPLOY_INTERFACES": '["fake", "ramdisk"]',
        "TETSU_BOOT_ROOT": str(boot_root),
        "TETSU_BOOT_SERVER_PORT": str(boot_port),
        "TETSU_BOOT_SERVER_URL": boot_url,
        "TETSU_TFTP_PORT": "0",  # the guests' NIC ROM is iPXE already
        "TETSU_DHCP_HOSTSDIR": str(hostsdir),
        "TETSU_CALLBACK_URL": f"http://{HOST_IP}:{api_port}",
        "TETSU_RAMDISK_KERNEL": str(kernel),
        "TETSU_RAMDISK_INITRAMFS": str(initramfs),
    }
    config = dnsmasq_config(
        interface="lab0",
        dhcp_range=(f"{SUBNET_PREFIX}.100", f"{SUBNET_PREFIX}.199"),
        boot_server_url=boot_url,
        tftp_server_ip=HOST_IP,
        hostsdir=hostsdir,
        ipv6_ra_prefix=IPV6_PREFIX,
    )
    return env, config


def _domain_xml(guest: Guest, bridge: str, memory_mb: int) -> str:
    # The three traps of TOPOLOGY.md: host csum off (or Linux guests' TCP dies in OVS
    # netdev), bios useserial (or iPXE prints nothing on the serial log), and a network boot
    # order set by the BMC (virtualbmc rewrites <boot dev>).
    return textwrap.dedent(
        f"""\
        <domain type='qemu'>
          <name>{guest.name}</name>
          <memory unit='MiB'>{memory_mb}</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <boot dev='network'/>
            <bios useserial='yes'/>
          </os>
          <features><acpi/></features>
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='raw' cache='unsafe'/>
              <source file='{guest.disk}'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <interface type='bridge'>
              <mac address='{guest.mac}'/>
              <source bridge='{bridge}'/>
              <virtualport type='openvswitch'/>
              <target dev='{guest.tap}'/>
              <model type='virtio'/>
              <driver name='qemu'><host csum='off'/></driver>
            </interface>
            <serial type='file'>
              <source path='{guest.serial_log}' append='on'/>
              <target port='0'/>
            </serial>
            <console type='file'>
              <source path='{guest.serial_log}' append='on'/>
              <target type='serial' port='0'/>
            </console>
          </devices>
        </domain>
        """
    )


def _free_udp_ports(count: int, start: int) -> list[int]:
    ports: list[int] = []
    port = start
    while len(ports) < count and port < start + 1000:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                port += 1
                continue
        ports.append(port)
        port += 1
    return ports


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def lab(
    workdir: Path,
    *,
    guests: int = 2,
    disk_mb: int = 512,
    memory_mb: int = 384,
    dnsmasq_config: str | None = None,
    hostsdir: Path | None = None,
    controller_port: int | None = None,
) -> Iterator[Lab]:
    """Set up the lab in ``workdir`` and tear it down afterwards.

    ``dnsmasq_config`` is the configuration text for the lab's dnsmasq (the conductor's
    boot server makes it); None starts a plain DHCP server. With ``controller_port``, the
    bridge forwards only what the OpenFlow controller on 127.0.0.1:<port> (netctl) tells it
    to (``fail_mode=secure``); without, it is a plain learning switch.
    """
    check_prerequisites()
    with exclusive():
        ensure_libvirtd()
        ensure_openvswitch()
        remove_stale()
        workdir.mkdir(parents=True, exist_ok=True)
        lab_id = secrets.token_hex(2)
        the_lab = Lab(
            workdir=workdir,
            lab_id=lab_id,
            bridge=f"{BRIDGE_PREFIX}{lab_id}",
            namespace=f"{NAME_PREFIX}-{lab_id}",
            datapath_id=f"00007e77{lab_id}0000",
        )
        try:
            _make_network(the_lab, controller_port)
            _start_dnsmasq(the_lab, dnsmasq_config, hostsdir)
            _start_vbmcd(the_lab)
            _make_guests(the_lab, guests, disk_mb, memory_mb)
            yield the_lab
        finally:
            _tear_down(the_lab)


def _make_network(lab: Lab, controller_port: int | None) -> None:
    bridge, namespace = lab.bridge, lab.namespace
    settings = ["datapath_type=netdev", f"other-config:datapath-id={lab.datapath_id}"]
    if controller_port is not None:
        settings += ["fail_mode=secure", "protocols=OpenFlow13"]
    run("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, *settings)
    if controller_port is not None:
        run("ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{controller_port}")
    run("ip", "link", "set", bridge, "up")
    run("ip", "addr", "add", f"{HOST_IP}/24", "dev", bridge)
    run("ip", "netns", "add", namespace)
    outside, inside = f"{bridge}-o", f"{bridge}-n"
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
    run("ip", "link", "set", inside, "netns", namespace)
    netns(namespace, "ip", "link", "set", inside, "name", "lab0")
    netns(namespace, "ip", "addr", "add", f"{DNSMASQ_IP}/24", "dev", "lab0")
    netns(namespace, "ip", "addr", "add", f"{IPV6_PREFIX}1/64", "dev", "lab0", "nodad")
    netns(namespace, "ip", "link", "set", "lab0", "up")
    netns(namespace, "ip", "link", "set", "lo", "up")
    # OVS's userspace datapath forwards packets with partial checksums as they are.
    netns(namespace, "ethtool", "-K", "lab0", "tx", "off")
    run("ip", "link", "set", outside, "up")
    run("ethtool", "-K", outside, "tx", "off")
    run("ethtool", "-K", bridge, "tx", "off", check=False)
    run("ovs-vsctl", "add-port", bridge, outside)


def _start_dnsmasq(lab: Lab, config: str | None, hostsdir: Path | None) -> None:
    path = lab.workdir / "dnsmasq.conf"
    if config is None:
        config = "port=0\ninterface=lab0\nbind-interfaces\n"
        config += f"dhcp-range={SUBNET_PREFIX}.100,{SUBNET_PREFIX}.199,10m\n"
        if hostsdir is not None:
            config += f"dhcp-hostsdir={hostsdir}\n"
    config += textwrap.dedent(
        f"""\
        user=root
        log-dhcp
        log-facility={lab.workdir / "dnsmasq.log"}
        pid-file={lab.workdir / "dnsmasq.pid"}
        dhcp-leasefile={lab.workdir / "dnsmasq.leases"}
        """
    )
    path.write_text(config)
    netns(lab.namespace, "dnsmasq", f"--conf-file={path}")


def _start_vbmcd(lab: Lab) -> None:
    config_dir = lab.workdir / "vbmc"
    config_dir.mkdir(exist_ok=True)
    conf = lab.workdir / "vbmc.conf"
    conf.write_text(
        "[default]\n"
        f"config_dir = {config_dir}\n"
        f"pid_file = {lab.workdir / 'vbmcd.pid'}\n"
        f"server_port = {_free_tcp_port()}\n"
        "[log]\n"
        f"logfile = {lab.workdir / 'vbmcd.log'}\n"
    )
    lab._vbmc_env = {**os.environ, "VIRTUALBMC_CONFIG": str(conf)}
    log = (lab.workdir / "vbmcd.out").open("wb")
    lab._processes.append(
        subprocess.Popen(
            [str(LAB_VENV / "bin" / "vbmcd"), "--foreground"],
            env=lab._vbmc_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    log.close()
    wait_until(
        lambda: (
            run(str(LAB_VENV / "bin" / "vbmc"), "list", env=lab._vbmc_env, check=False).returncode
            == 0
        ),
        timeout=30,
        what="vbmcd",
    )


def _make_guests(lab: Lab, count: int, disk_mb: int, memory_mb: int) -> None:
    ports = _free_udp_ports(count, FIRST_BMC_PORT)
    for index in range(count):
        name = f"{NAME_PREFIX}-{lab.lab_id}-node{index + 1}"
        guest = Guest(
            index=index,
            name=name,
            mac=f"52:54:00:77:00:{0x11 + index:02x}",
            ipmi_port=ports[index],
            disk=lab.workdir / f"node{index + 1}.img",
            serial_log=lab.workdir / f"node{index + 1}-serial.log",
            ipmi_username="admin",
            # hex: a random password that starts with '-' reads as an option to vbmc
            ipmi_password=secrets.token_hex(8),
            tap=f"{lab.bridge}-g{index + 1}",
        )
        with guest.disk.open("wb") as handle:  # sparse: an empty disk, as from the factory
            handle.truncate(disk_mb * 1024 * 1024)
        xml = lab.workdir / f"{name}.xml"
        xml.write_text(_domain_xml(guest, lab.bridge, memory_mb))
        run("virsh", "-c", LIBVIRT_URI, "define", str(xml))
        lab.vbmc(
            "add",
            name,
            "--port",
            str(guest.ipmi_port),
            "--address",
            "127.0.0.1",
            "--username",
            guest.ipmi_username,
            "--password",
            guest.ipmi_password,
            "--libvirt-uri",
            LIBVIRT_URI,
        )
        lab.vbmc("start", name)
        lab.guests.append(guest)
    for guest in lab.guests:
        wait_until(
            lambda guest=guest: guest.ipmitool("power", "status", check=False) != "",
            timeout=30,
            what=f"BMC of {guest.name}",
        )


def _tear_down(lab: Lab) -> None:
    for guest in lab.guests:
        with contextlib.suppress(Exception):
            lab.vbmc("delete", guest.name, check=False)
        run("virsh", "-c", LIBVIRT_URI, "destroy", guest.name, check=False)
        run("virsh", "-c", LIBVIRT_URI, "undefine", guest.name, "--nvram", check=False)
    for process in lab._processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    pid_file = lab.workdir / "dnsmasq.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    run("ip", "netns", "delete", lab.namespace, check=False)
    run("ovs-vsctl", "--if-exists", "del-br", lab.bridge, check=False)
    run("ip", "link", "delete", f"{lab.bridge}-o", check=False)
    for guest in lab.guests:
        with contextlib.suppress(FileNotFoundError):
            guest.disk.unlink()  # big sparse files: the serial logs are what is worth keeping


def guest_names(lab: Lab) -> Sequence[str]:
    return [guest.name for guest in lab.guests]
