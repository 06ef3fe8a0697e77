"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 01:59:20.050634
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "conductor",
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hostname"),
    )
    op.create_table(
        "flavor",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("resource_class", sa.String(length=80), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flavor", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flavor_name"), ["name"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_flavor_resource_class"), ["resource_class"], unique=False
        )

    op.create_table(
        "node",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("resource_class", sa.String(length=80), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("power_interface", sa.String(length=40), nullable=False),
        sa.Column("boot_interface", sa.String(length=40), nullable=False),
        sa.Column("deploy_interface", sa.String(length=40), nullable=False),
        sa.Column("management_interface", sa.String(length=40), nullable=False),
        sa.Column("driver_info", sa.JSON(), nullable=True),
        sa.Column("driver_internal_info", sa.JSON(), nullable=True),
        sa.Column("provision_state", sa.String(length=40), nullable=False),
        sa.Column("target_provision_state", sa.String(length=40), nullable=True),
        sa.Column("provision_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("power_state", sa.String(length=16), nullable=False),
        sa.Column("target_power_state", sa.String(length=16), nullable=True),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column("maintenance_reason", sa.String(length=1000), nullable=True),
        sa.Column("reservation", sa.String(length=255), nullable=True),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        sa.Column("last_error", sa.String(length=4000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_instance_id"), ["instance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_maintenance"), ["maintenance"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_name"), ["name"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_node_provision_state"), ["provision_state"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_node_reservation"), ["reservation"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_node_resource_class"), ["resource_class"], unique=False
        )

    op.create_table(
        "project",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_project_name"), ["name"], unique=True)

    op.create_table(
        "image",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disk_format", sa.String(length=16), nullable=False),
        sa.Column("source_url", sa.String(length=2000), nullable=True),
        sa.Column("file_path", sa.String(length=2000), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_project_id"), ["project_id"], unique=False)

    op.create_table(
        "network",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("segmentation_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("segmentation_id"),
    )
    with op.batch_alter_table("network", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_network_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_network_project_id"), ["project_id"], unique=False)

    op.create_table(
        "user",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_user_project_id"), ["project_id"], unique=False)

    op.create_table(
        "instance",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("flavor_id", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("network_ids", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("task_state", sa.String(length=16), nullable=True),
        sa.Column("node_id", sa.String(length=36), nullable=True),
        sa.Column("fault", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_node_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["flavor_id"],
            ["flavor.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["image.id"],
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_instance_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_instance_status"), ["status"], unique=False)

    op.create_table(
        "port",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=17), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("switch_id", sa.String(length=64), nullable=True),
        sa.Column("switch_port", sa.String(length=64), nullable=True),
        sa.Column("binding", sa.String(length=16), nullable=False),
        sa.Column("network_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"],
            ["network.id"],
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["node.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("port", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_port_address"), ["address"], unique=True)
        batch_op.create_index(batch_op.f("ix_port_network_id"), ["network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_port_node_id"), ["node_id"], unique=False)

    op.create_table(
        "token",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_token_user_id"), ["user_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_token_user_id"))

    op.drop_table("token")
    with op.batch_alter_table("port", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_port_node_id"))
        batch_op.drop_index(batch_op.f("ix_port_network_id"))
        batch_op.drop_index(batch_op.f("ix_port_address"))

    op.drop_table("port")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_status"))
        batch_op.drop_index(batch_op.f("ix_instance_project_id"))
        batch_op.drop_index(batch_op.f("ix_instance_node_id"))

    op.drop_table("instance")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_project_id"))
        batch_op.drop_index(batch_op.f("ix_user_name"))

    op.drop_table("user")
    with op.batch_alter_table("network", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_network_project_id"))
        batch_op.drop_index(batch_op.f("ix_network_name"))

    op.drop_table("network")
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_project_id"))
        batch_op.drop_index(batch_op.f("ix_image_name"))

    op.drop_table("image")
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_project_name"))

    op.drop_table("project")
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_resource_class"))
        batch_op.drop_index(batch_op.f("ix_node_reservation"))
        batch_op.drop_index(batch_op.f("ix_node_provision_state"))
        batch_op.drop_index(batch_op.f("ix_node_name"))
        batch_op.drop_index(batch_op.f("ix_node_maintenance"))
        batch_op.drop_index(batch_op.f("ix_node_instance_id"))

    op.drop_table("node")
    with op.batch_alter_table("flavor", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flavor_resource_class"))
        batch_op.drop_index(batch_op.f("ix_flavor_name"))

    op.drop_table("flavor")
    op.drop_table("conductor")
