"""Updates the destination keeps rejecting, parked as dead after a number of runs; runs count them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "failed_updates",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=False),
        sa.Column("failed_runs", sa.Integer(), nullable=False),
        sa.Column("dead", sa.Boolean(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job", "user_id", name=op.f("pk_failed_updates")),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("parked", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("parked")
    op.drop_table("failed_updates")
