"""Auditing: per-run counts per key (kept when per-update rows are pruned) and an index for a user's history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "run_keys",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("entered", sa.Integer(), nullable=False),
        sa.Column("exited", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("delivered_entered", sa.Integer(), nullable=False),
        sa.Column("delivered_exited", sa.Integer(), nullable=False),
        sa.Column("delivered_changed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_keys_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_keys")),
    )
    with op.batch_alter_table("run_updates") as batch:
        batch.create_index("ix_run_updates_user_id_run_id", ["user_id", "run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_updates") as batch:
        batch.drop_index("ix_run_updates_user_id_run_id")
    op.drop_table("run_keys")
