"""The local resource store's compaction floor: the newest resourceVersion of the deleted
resources' tombstones the retention removed. A watch resuming from an older version may
have missed a deletion, so it is answered 410 Gone (as an API server does) and lists again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_compaction",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("resource_compaction")
