"""Initial registry: runtimes, models, vmodels, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _times() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "runtimes",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        *_times(),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(253), primary_key=True),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("model_type_version", sa.String(64), nullable=False),
        sa.Column("runtime", sa.String(253), nullable=False),
        sa.Column("protocol_version", sa.String(32), nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("storage_key", sa.String(253), nullable=False),
        sa.Column("storage_path", sa.Text(), nullable=False),
        sa.Column("storage_params", sa.JSON(), nullable=False),
        sa.Column("declared_size", sa.BigInteger(), nullable=False),
        sa.Column("predicted_size", sa.BigInteger(), nullable=False),
        sa.Column("measured_size", sa.BigInteger(), nullable=False),
        sa.Column("min_copies", sa.Integer(), nullable=False),
        sa.Column("max_copies", sa.Integer(), nullable=False),
        sa.Column("last_failure", sa.JSON(), nullable=True),
        *_times(),
    )
    op.create_table(
        "vmodels",
        sa.Column("id", sa.String(253), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("active_model_id", sa.String(253), nullable=False),
        sa.Column("target_model_id", sa.String(253), nullable=False),
        sa.Column("auto_delete", sa.Boolean(), nullable=False),
        *_times(),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(253), nullable=False),
        sa.Column("pod_id", sa.String(253), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_model_id", "events", ["model_id"])
    op.create_index("ix_events_pod_id", "events", ["pod_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("vmodels")
    op.drop_table("models")
    op.drop_table("runtimes")
