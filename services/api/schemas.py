"""The API's request and response bodies: Create/Update models in, Public models out.

Request models refuse unknown fields, so a misspelt field is a 400 rather than silently
ignored, and values no database could store (see :func:`unstorable`). Public models are
built from table rows with :meth:`from_row`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlmodel import SQLModel

from libs import redact
from libs.db import (
    Conductor,
    DiskFormat,
    Image,
    ImageStatus,
    Instance,
    InstanceStatus,
    Node,
    PortBinding,
    PowerState,
    Role,
    TaskState,
    as_utc,
)

UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]


def _trimmed(text: str) -> str:
    """Surrounding whitespace dropped; what is left must not be empty."""
    stripped = text.strip()
    if not stripped:
        raise PydanticCustomError("blank", "must not be blank")
    return stripped


# The length is checked on the text as sent, as the published schema says (maxLength), and
# then the surrounding whitespace is dropped: stripping first let 256 characters in.
Name = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_trimmed)]
# Nodes are addressed by name in URLs (/v1/nodes/{name}) and named like hosts: only
# characters that need no escaping in a path segment (so no whitespace to strip either).
NodeName = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._~-]+$")
]
Reference = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_trimmed)
]
ResourceClass = Annotated[
    str, StringConstraints(min_length=1, max_length=80), AfterValidator(_trimmed)
]
InterfaceName = Annotated[
    str, StringConstraints(min_length=1, max_length=40), AfterValidator(_trimmed)
]
# Strict: JSON "4" or true is a mistake in a count, not something to coerce.
# Bounded by the database's column types (INTEGER, BIGINT): a larger number is a 400.
Count = Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]
ByteSize = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]
StrictFlag = Annotated[bool, Field(strict=True)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{64}$", to_lower=True)]
HttpURL = Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]
SwitchField = Annotated[str, StringConstraints(min_length=1, max_length=64)]

_MAC_PARTS = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_MAC_BARE = re.compile(r"^[0-9a-f]{12}$")
_MAC_DOTTED = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")


def normalise_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff`` or ``aabbccddeeff`` -> ``aa:bb:cc:dd:ee:ff``."""
    text = value.strip().lower()
    if _MAC_PARTS.match(text) or _MAC_BARE.match(text) or _MAC_DOTTED.match(text):
        digits = re.sub(r"[^0-9a-f]", "", text)
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    raise ValueError("not a MAC address (expected six hex octets, e.g. 52:54:00:12:34:56)")


MacAddress = Annotated[str, AfterValidator(normalise_mac)]


#: How deep objects and lists may nest in a free-form field such as driver_info: far more
#: than a driver needs, far less than the depth at which the answer's JSON encoder gives up.
MAX_NESTING = 32


def unstorable(value: Any) -> str | None:
    """Why ``value`` could not be stored and answered again, or None when it can.

    PostgreSQL refuses a NUL character in text and NaN or Infinity in JSON (SQLite takes
    them, so only production would answer 500). A lone surrogate or a very deep nesting is
    stored by either, but cannot be encoded in an answer again: every list showing it fails.
    """
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:  # not recursive: a deep value must not exhaust the stack
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL characters"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "must be valid Unicode (it contains a lone surrogate)"
        elif isinstance(item, float) and not math.isfinite(item):
            return "must be a finite number"
        elif isinstance(item, dict | list):
            if depth >= MAX_NESTING:
                return f"must not nest objects or lists more than {MAX_NESTING} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = unstorable(value)
        if problem is not None:
            raise PydanticCustomError("unstorable", problem)
        return value


class PublicModel(BaseModel):
    """An answer whose fields are the table row's columns of the same names."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def from_row(cls, row: SQLModel) -> Self:
        return cls.model_validate(row)


# Projects and users


class ProjectCreate(RequestBody):
    name: Name
    description: Annotated[str, StringConstraints(max_length=1000)] = ""


class ProjectPublic(PublicModel):
    id: str
    name: str
    description: str
    created_at: UTCDateTime


class ProjectList(BaseModel):
    projects: list[ProjectPublic]
    next_marker: str | None


class UserCreate(RequestBody):
    name: Name
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    project_id: Reference
    role: Role = Role.MEMBER


class UserPublic(PublicModel):
    id: str
    name: str
    project_id: str
    role: Role
    created_at: UTCDateTime


class UserList(BaseModel):
    users: list[UserPublic]
    next_marker: str | None


class TokenCreate(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class TokenPublic(BaseModel):
    token: str = Field(description="The bearer token; shown only in this answer")
    expires_at: UTCDateTime
    user_id: str
    project_id: str
    role: Role


# Flavors and images


class FlavorCreate(RequestBody):
    name: Name
    resource_class: ResourceClass
    cpus: Count
    memory_mb: Count
    disk_gb: Count


class FlavorPublic(PublicModel):
    id: str
    name: str
    resource_class: str
    cpus: int
    memory_mb: int
    disk_gb: int
    created_at: UTCDateTime


class FlavorList(BaseModel):
    flavors: list[FlavorPublic]
    next_marker: str | None


Visibility = Literal["private", "public"]


class ImageCreate(RequestBody):
    name: Name
    disk_format: DiskFormat = DiskFormat.RAW
    visibility: Visibility = "private"
    source_url: HttpURL | None = None
    sha256: Sha256 | None = None
    size: ByteSize | None = None


class ImagePublic(BaseModel):
    id: str
    name: str
    project_id: str | None
    visibility: Visibility
    status: ImageStatus
    disk_format: DiskFormat
    source_url: str | None
    sha256: str | None
    size: int | None
    created_at: UTCDateTime

    @classmethod
    def from_row(cls, row: Image) -> Self:
        return cls(
            id=row.id,
            name=row.name,
            project_id=row.project_id,
            visibility="public" if row.project_id is None else "private",
            status=row.status,
            disk_format=row.disk_format,
            source_url=row.source_url,
            sha256=row.sha256,
            size=row.size,
            created_at=row.created_at,
        )


class ImageList(BaseModel):
    images: list[ImagePublic]
    next_marker: str | None


# Networks


class NetworkCreate(RequestBody):
    name: Name
    segmentation_id: Annotated[int, Field(ge=1, le=4094, strict=True)] | None = None
    project_id: Reference | None = None


class NetworkPublic(PublicModel):
    id: str
    name: str
    project_id: str
    segmentation_id: int
    created_at: UTCDateTime


class NetworkList(BaseModel):
    networks: list[NetworkPublic]
    next_marker: str | None


# Nodes


class NodeProperties(RequestBody):
    cpus: Count
    memory_mb: Count
    disk_gb: Count


class NodePropertiesUpdate(RequestBody):
    cpus: Count | None = None
    memory_mb: Count | None = None
    disk_gb: Count | None = None


class NodeCreate(RequestBody):
    name: NodeName
    resource_class: ResourceClass
    properties: NodeProperties
    power_interface: InterfaceName = "fake"
    boot_interface: InterfaceName = "fake"
    deploy_interface: InterfaceName = "fake"
    management_interface: InterfaceName = "fake"
    driver_info: dict[str, Any] = Field(default_factory=dict)


class NodeUpdate(RequestBody):
    name: NodeName | None = None
    resource_class: ResourceClass | None = None
    properties: NodePropertiesUpdate | None = None
    driver_info: dict[str, Any] | None = Field(
        default=None, description="Merged into the node's; a key set to null is removed"
    )
    maintenance: StrictFlag | None = None
    maintenance_reason: Annotated[str, StringConstraints(max_length=1000)] | None = None


class NodePropertiesPublic(BaseModel):
    cpus: int
    memory_mb: int
    disk_gb: int


class NodePublic(BaseModel):
    id: str
    name: str
    resource_class: str
    properties: NodePropertiesPublic
    power_interface: str
    boot_interface: str
    deploy_interface: str
    management_interface: str
    driver_info: dict[str, Any] = Field(
        description=f"Credentials (keys naming a password, secret, token or key) are shown "
        f"as {redact.FIELD_MASK!r}"
    )
    provision_state: str
    target_provision_state: str | None
    power_state: PowerState
    target_power_state: PowerState | None
    maintenance: bool
    maintenance_reason: str | None
    reservation: str | None
    instance_id: str | None
    last_error: str | None
    hypervisor_id: str | None = Field(
        description="The hypervisor of a VM node the scheduler made on demand (else null)"
    )
    pinned_conductor: str | None = Field(
        description="The only conductor that manages this node (a VM's), else null"
    )
    created_at: UTCDateTime
    updated_at: UTCDateTime

    @classmethod
    def from_row(cls, row: Node) -> Self:
        return cls(
            id=row.id,
            name=row.name,
            resource_class=row.resource_class,
            properties=NodePropertiesPublic(
                cpus=row.cpus, memory_mb=row.memory_mb, disk_gb=row.disk_gb
            ),
            power_interface=row.power_interface,
            boot_interface=row.boot_interface,
            deploy_interface=row.deploy_interface,
            management_interface=row.management_interface,
            driver_info=redact.mask_fields(row.driver_info or {}),
            provision_state=row.provision_state,
            target_provision_state=row.target_provision_state,
            power_state=row.power_state,
            target_power_state=row.target_power_state,
            maintenance=row.maintenance,
            maintenance_reason=row.maintenance_reason,
            reservation=row.reservation,
            instance_id=row.instance_id,
            last_error=row.last_error,
            hypervisor_id=row.hypervisor_id,
            pinned_conductor=row.pinned_conductor,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class NodeList(BaseModel):
    nodes: list[NodePublic]
    next_marker: str | None


class ProvisionRequest(RequestBody):
    target: Literal["manage", "provide", "delete"]


class PowerRequest(RequestBody):
    target: Literal["power on", "power off", "reboot"]


class InterfaceValidation(BaseModel):
    result: bool
    reason: str | None = None


class CallbackRequest(RequestBody):
    token: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    success: StrictFlag
    message: Annotated[str, StringConstraints(max_length=4000)] | None = None


# Ports


class PortCreate(RequestBody):
    address: MacAddress
    node_id: Reference
    switch_id: SwitchField | None = None
    switch_port: SwitchField | None = None


class PortUpdate(RequestBody):
    address: MacAddress | None = None
    node_id: Reference | None = None
    switch_id: SwitchField | None = None
    switch_port: SwitchField | None = None


class PortPublic(PublicModel):
    id: str
    address: str
    node_id: str
    switch_id: str | None
    switch_port: str | None
    binding: PortBinding
    network_id: str | None
    created_at: UTCDateTime


class PortList(BaseModel):
    ports: list[PortPublic]
    next_marker: str | None


# Instances


class InstanceCreate(RequestBody):
    name: Name
    flavor: Reference = Field(description="Flavor id or name")
    image: Reference = Field(description="Image id or name")
    networks: list[Reference] = Field(
        default_factory=list, description="Network ids; the node's ports are bound in order"
    )


class InstanceRebuild(RequestBody):
    image: Reference | None = Field(
        default=None, description="Image id or name to write; default: the instance's own"
    )


class InstancePublic(BaseModel):
    id: str
    name: str
    project_id: str
    user_id: str | None
    flavor_id: str
    image_id: str
    network_ids: list[str]
    status: InstanceStatus
    task_state: TaskState | None
    node_id: str | None = Field(description="Shown to admins only")
    fault: dict[str, Any] | None
    attempts: int
    created_at: UTCDateTime
    updated_at: UTCDateTime

    @classmethod
    def from_row(cls, row: Instance, *, show_node: bool) -> Self:
        return cls(
            id=row.id,
            name=row.name,
            project_id=row.project_id,
            user_id=row.user_id,
            flavor_id=row.flavor_id,
            image_id=row.image_id,
            network_ids=list(row.network_ids or []),
            status=row.status,
            task_state=row.task_state,
            node_id=row.node_id if show_node else None,
            fault=row.fault,
            attempts=row.attempts,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class InstanceList(BaseModel):
    instances: list[InstancePublic]
    next_marker: str | None


# Conductors


class ConductorPublic(BaseModel):
    hostname: str
    alive: bool
    updated_at: UTCDateTime

    @classmethod
    def from_row(cls, row: Conductor, *, alive: bool) -> Self:
        return cls(hostname=row.hostname, alive=alive, updated_at=row.updated_at)


class ConductorList(BaseModel):
    conductors: list[ConductorPublic]
    next_marker: str | None


class HypervisorResources(BaseModel):
    vcpus: int
    memory_mb: int
    disk_gb: int


class HypervisorPublic(BaseModel):
    id: str
    name: str
    conductor: str = Field(description="The conductor on this host; it manages its VM nodes")
    alive: bool = Field(description="Whether that conductor heartbeats (else no VM is made here)")
    resource_class: str = Field(description="Flavors of this class get VM nodes made here")
    capacity: HypervisorResources = Field(
        description="Schedulable: the host's resources times the allocation ratios, less "
        "what is reserved for the host"
    )
    used: HypervisorResources = Field(description="Held by the VM nodes on it")
    free: HypervisorResources
    vm_nodes: int = Field(description="VM nodes on it now (any state)")
    bridge: str
    switch_id: str | None
    updated_at: UTCDateTime = Field(description="When its conductor last reported")
    created_at: UTCDateTime


class HypervisorList(BaseModel):
    hypervisors: list[HypervisorPublic]
    next_marker: str | None


class Health(BaseModel):
    status: Literal["ok"]


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: invalid_input, not_found, duplicate, ...")
    reason: str = Field(description="What went wrong, for a human")
    request_id: str = Field(description="The X-Request-ID of the request, for the logs")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail
