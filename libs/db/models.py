"""The database tables every service shares: one class per table, sqlmodel on SQLAlchemy.

Enumerations are stored as their string values so a row reads the same in psql as in the
API. Identifiers are UUID strings made by the application, never by the database, so an
API can answer with an instance's id before anything else has happened to it.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, String
from sqlmodel import Field, SQLModel


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


# Default factories are plain functions, never the builtins list and dict: for each field
# left to its default, pydantic asks for the factory's signature, and a builtin's is parsed
# from its text with the ast module (measured: 300 us for list, 19 us for a function; an
# Instance cost 0.87 ms to construct).
def empty_list() -> list[Any]:
    return []


def empty_dict() -> dict[str, Any]:
    return {}


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime: SQLite hands timestamps back without a zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Role(enum.StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class PowerState(enum.StrEnum):
    ON = "power on"
    OFF = "power off"
    ERROR = "error"
    UNKNOWN = "unknown"


class InstanceStatus(enum.StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    REBUILD = "REBUILD"  # its node is being re-imaged in place
    DELETING = "DELETING"
    DELETED = "DELETED"
    ERROR = "ERROR"


class TaskState(enum.StrEnum):
    SCHEDULING = "scheduling"
    DEPLOYING = "deploying"
    REBUILDING = "rebuilding"
    EVACUATING = "evacuating"  # its dead node is being fenced; then scheduling again
    DELETING = "deleting"


class PortBinding(enum.StrEnum):
    """Where a port's switch port is wired now."""

    NONE = "none"  # isolated: no traffic in or out
    PROVISIONING = "provisioning"  # the conductor's DHCP/TFTP/HTTP network
    TENANT = "tenant"  # the instance's network (Port.network_id)


class ImageStatus(enum.StrEnum):
    QUEUED = "queued"  # created, no data yet
    ACTIVE = "active"  # data (or a source URL) with known size and sha256


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class Project(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=255)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class User(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=255)
    project_id: str = Field(foreign_key="project.id", index=True, max_length=36)
    role: Role = Field(default=Role.MEMBER, sa_type=String(16))
    # scrypt hash as "scrypt$<salt hex>$<hash hex>"; never returned by the API.
    password_hash: str = Field(max_length=300)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Token(SQLModel, table=True):
    # sha256 of the bearer token: the token itself is shown once and never stored.
    id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="user.id", index=True, max_length=36)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Flavor(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=255)
    resource_class: str = Field(index=True, max_length=80)
    # A node fits when each of its properties is at least the flavor's.
    cpus: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    disk_gb: int = Field(default=0, ge=0)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Image(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(index=True, max_length=255)
    # None: a public image, visible to every project (made by an admin).
    project_id: str | None = Field(default=None, foreign_key="project.id", index=True)
    status: ImageStatus = Field(default=ImageStatus.QUEUED, sa_type=String(16))
    disk_format: DiskFormat = Field(default=DiskFormat.RAW, sa_type=String(16))
    # Either a URL the deploy ramdisk streams from, or data uploaded to the API (file_path).
    source_url: str | None = Field(default=None, max_length=2000)
    file_path: str | None = Field(default=None, max_length=2000)
    sha256: str | None = Field(default=None, max_length=64)
    size: int | None = Field(default=None, ge=0, sa_type=BigInteger)  # images pass 2 GiB
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Network(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(index=True, max_length=255)
    project_id: str = Field(foreign_key="project.id", index=True, max_length=36)
    # The VLAN/tunnel id that isolates this network on the switches; unique per estate.
    segmentation_id: int = Field(unique=True, ge=1, le=4094)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Node(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=255)
    resource_class: str = Field(index=True, max_length=80)
    cpus: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    disk_gb: int = Field(default=0, ge=0)

    # Hardware interfaces, chosen by name from the conductor's driver registry.
    power_interface: str = Field(default="fake", max_length=40)
    boot_interface: str = Field(default="fake", max_length=40)
    deploy_interface: str = Field(default="fake", max_length=40)
    management_interface: str = Field(default="fake", max_length=40)
    # BMC address/port/username/password and driver options. The password is write-only
    # in the API and never logged.
    driver_info: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON))
    # Drivers' own bookkeeping (callback token hash, fake driver state, timestamps).
    driver_internal_info: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON))

    provision_state: str = Field(default="enroll", index=True, max_length=40)
    target_provision_state: str | None = Field(default=None, max_length=40)
    provision_updated_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True
    )
    power_state: PowerState = Field(default=PowerState.UNKNOWN, sa_type=String(16))
    target_power_state: PowerState | None = Field(default=None, sa_type=String(16))
    maintenance: bool = Field(default=False, index=True)
    maintenance_reason: str | None = Field(default=None, max_length=1000)
    # Hostname of the conductor holding this node's exclusive lock, or None.
    reservation: str | None = Field(default=None, index=True, max_length=255)
    # The instance this node is claimed for (set by the scheduler's atomic claim).
    instance_id: str | None = Field(default=None, index=True, max_length=36)
    last_error: str | None = Field(default=None, max_length=4000)
    # A VM node the scheduler made on a hypervisor for one instance (deleted after its
    # cleaning, which gives the capacity back); None for enrolled nodes.
    hypervisor_id: str | None = Field(
        default=None, foreign_key="hypervisor.id", index=True, max_length=36
    )
    # The conductor that must manage this node (a VM's disk is on its hypervisor), or
    # None: the hash ring chooses.
    pinned_conductor: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Hypervisor(SQLModel, table=True):
    """A host whose conductor runs VM nodes: the capacity it reports, which the
    scheduler carves VM nodes out of (each VM node holds its cpus/memory/disk)."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=255)
    # The conductor on this host: it manages every VM node made here.
    conductor: str = Field(max_length=255)
    # The resource class of the VM nodes made here (flavors of this class get them).
    resource_class: str = Field(index=True, max_length=80)
    # Schedulable capacity: the host's resources times the allocation ratios, less
    # what is reserved for the host itself.
    vcpus: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    disk_gb: int = Field(default=0, ge=0)
    # Where the VMs' NICs go: the Open vSwitch bridge and its datapath id.
    bridge: str = Field(max_length=255)
    switch_id: str | None = Field(default=None, max_length=64)
    libvirt_uri: str = Field(default="qemu:///system", max_length=255)
    # Bumped by every claim of capacity: the claims on one hypervisor run one at a time.
    generation: int = Field(default=0, ge=0)
    # When its conductor last reported (a hypervisor not heard from is not scheduled to).
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Port(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    address: str = Field(unique=True, index=True, max_length=17)  # MAC, lower case
    node_id: str = Field(foreign_key="node.id", index=True, max_length=36)
    # Where the NIC is cabled: switch datapath id, switch port name/number.
    switch_id: str | None = Field(default=None, max_length=64)
    switch_port: str | None = Field(default=None, max_length=64)
    binding: PortBinding = Field(default=PortBinding.NONE, sa_type=String(16))
    network_id: str | None = Field(default=None, foreign_key="network.id", index=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class Instance(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=255)
    project_id: str = Field(foreign_key="project.id", index=True, max_length=36)
    user_id: str | None = Field(default=None, max_length=36)
    flavor_id: str = Field(foreign_key="flavor.id", max_length=36)
    image_id: str = Field(foreign_key="image.id", max_length=36)
    # Network ids in the order the node's ports are bound to them.
    network_ids: list[str] = Field(default_factory=empty_list, sa_column=Column(JSON))
    status: InstanceStatus = Field(default=InstanceStatus.BUILD, index=True, sa_type=String(16))
    task_state: TaskState | None = Field(default=None, sa_type=String(16))
    node_id: str | None = Field(default=None, index=True, max_length=36)
    # Why the instance is in ERROR: {"code": ..., "message": ...}.
    fault: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Scheduling attempts made so far and the nodes that failed, so a reschedule avoids them.
    attempts: int = Field(default=0, ge=0)
    failed_node_ids: list[str] = Field(default_factory=empty_list, sa_column=Column(JSON))
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )
    deleted_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True), nullable=True
    )


class Conductor(SQLModel, table=True):
    """A live conductor process: it heartbeats here and owns nodes by the hash ring."""

    hostname: str = Field(primary_key=True, max_length=255)
    online: bool = Field(default=True)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False
    )


class EventSeverity(enum.StrEnum):
    INFO = "info"
    ERROR = "error"


class Event(SQLModel, table=True):
    """A notification of a state change or a failure (``libs/notify``), kept for
    ``event_retention_hours`` and shown by ``GET /v1/events``."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False, index=True
    )
    # tetsu.<object>.<action>.start|end|error, e.g. tetsu.instance.create.end
    event_type: str = Field(index=True, max_length=255)
    object_type: str = Field(max_length=40)  # node | instance
    object_id: str = Field(index=True, max_length=36)
    # Who may see it: the instance's project; None (node events): admins only.
    project_id: str | None = Field(default=None, index=True, max_length=36)
    severity: EventSeverity = Field(default=EventSeverity.INFO, sa_type=String(16))
    # {"payload_version": "1.0", ...the object's fields after the change}; never credentials.
    payload: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON))
    request_id: str | None = Field(default=None, max_length=128)
