"""hypervisors: VM capacity per host, and the VM nodes the scheduler makes on them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hypervisor",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("conductor", sa.String(length=255), nullable=False),
        sa.Column("resource_class", sa.String(length=80), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("bridge", sa.String(length=255), nullable=False),
        sa.Column("switch_id", sa.String(length=64), nullable=True),
        sa.Column("libvirt_uri", sa.String(length=255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("hypervisor", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hypervisor_name"), ["name"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_hypervisor_resource_class"), ["resource_class"], unique=False
        )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hypervisor_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("pinned_conductor", sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f("ix_node_hypervisor_id"), ["hypervisor_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_node_hypervisor_id_hypervisor", "hypervisor", ["hypervisor_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_constraint("fk_node_hypervisor_id_hypervisor", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_node_hypervisor_id"))
        batch_op.drop_column("pinned_conductor")
        batch_op.drop_column("hypervisor_id")
    with op.batch_alter_table("hypervisor", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hypervisor_resource_class"))
        batch_op.drop_index(batch_op.f("ix_hypervisor_name"))
    op.drop_table("hypervisor")
