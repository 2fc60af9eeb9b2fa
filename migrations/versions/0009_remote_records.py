"""What a destination that finds records before writing keeps: each subject's record id there (``remote_ids``),
the custom attributes a job created with their types (``remote_attributes``), and each run's count of
subjects the destination has no record for (``runs.unmatched``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "remote_ids",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(length=100), nullable=False),
        sa.Column("remote_id", sa.String(length=200), nullable=False),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "user_id", name=op.f("pk_remote_ids")),
    )
    op.create_table(
        "remote_attributes",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "scope", "key", name=op.f("pk_remote_attributes")),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("unmatched", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("unmatched")
    op.drop_table("remote_attributes")
    op.drop_table("remote_ids")
