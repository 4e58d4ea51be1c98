"""Pending retirements of models a vmodel replaced: the model and when its grace ends, so a
scheduler killed during the grace leaves the retirement to the next leader.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_retirements",
        sa.Column("model_id", sa.String(253), primary_key=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_model_retirements_due_at", "model_retirements", ["due_at"])


def downgrade() -> None:
    op.drop_table("model_retirements")
