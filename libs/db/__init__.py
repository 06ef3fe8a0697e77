"""The shared database: tables (models), engines and sessions, and Alembic migrations.

The API, the scheduler and the conductors all read and write these tables; the network
controller writes port bindings. Schema changes go through ``libs/db/migrations``.
"""

from .availability import UNAVAILABLE_ERRORS, OutageLog, is_unavailable
from .engine import Database, SchemaMissing, make_engine
from .migrate import upgrade
from .models import (
    Conductor,
    DiskFormat,
    Flavor,
    Hypervisor,
    Image,
    ImageStatus,
    Instance,
    InstanceStatus,
    Network,
    Node,
    Port,
    PortBinding,
    PowerState,
    Project,
    Role,
    TaskState,
    Token,
    User,
    as_utc,
    new_id,
    utcnow,
)

__all__ = [
    "UNAVAILABLE_ERRORS",
    "Conductor",
    "Database",
    "DiskFormat",
    "Flavor",
    "Hypervisor",
    "Image",
    "ImageStatus",
    "Instance",
    "InstanceStatus",
    "Network",
    "Node",
    "OutageLog",
    "Port",
    "PortBinding",
    "PowerState",
    "Project",
    "Role",
    "SchemaMissing",
    "TaskState",
    "Token",
    "User",
    "as_utc",
    "is_unavailable",
    "make_engine",
    "new_id",
    "upgrade",
    "utcnow",
]
