"""Runtimes as their pods report them: labels, default model size, capacity, pod count.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("labels", sa.JSON(), "[]"),
    ("default_model_size", sa.BigInteger(), "0"),
    ("pod_capacity_bytes", sa.BigInteger(), "0"),
    ("max_loading_concurrency", sa.Integer(), "0"),
    ("pods", sa.Integer(), "0"),
)


def upgrade() -> None:
    # a server default fills rows written before this revision; the ORM sets every value
    for name, type_, default in _COLUMNS:
        op.add_column("runtimes", sa.Column(name, type_, nullable=False, server_default=sa.text(f"'{default}'")))
        op.alter_column("runtimes", name, server_default=None)


def downgrade() -> None:
    for name, _, _ in reversed(_COLUMNS):
        op.drop_column("runtimes", name)
