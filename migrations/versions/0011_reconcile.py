"""Reading the destination back: what a reconciliation found drifted (``drifts``, one row per subject and key,
of a run of the kind ``reconcile``), the subjects it asked the next run to resend (``repairs``), and why an
update was sent when it was not a change of the snapshot (``run_updates.reason``: ``reconcile``), and what a
reconciliation read and found (``runs.reconcile``, JSON); and how many updates a run left undelivered when it
ended (``runs.undelivered``), which `status` and the console's overview read instead of counting a run of a
million updates on every request; and the watermark a job's ``schedule.when_changed`` query returned when
the run started (``runs.watermark``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "drifts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=True),
        sa.Column("drift", sa.String(length=20), nullable=False),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.Column("found", sa.Text(), nullable=True),
        sa.Column("remote_id", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_drifts_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drifts")),
    )
    op.create_index("ix_drifts_run_id_id", "drifts", ["run_id", "id"])
    op.create_table(
        "repairs",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("keys", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "user_id", name=op.f("pk_repairs")),
    )
    with op.batch_alter_table("run_updates") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=20), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("reconcile", sa.Text(), nullable=True))
        batch.add_column(sa.Column("undelivered", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("watermark", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("watermark")
        batch.drop_column("undelivered")
        batch.drop_column("reconcile")
    with op.batch_alter_table("run_updates") as batch:
        batch.drop_column("reason")
    op.drop_table("repairs")
    op.drop_index("ix_drifts_run_id_id", table_name="drifts")
    op.drop_table("drifts")
