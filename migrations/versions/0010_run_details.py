"""What a run tells afterwards and what outlives it: each run's phases with their timings, the mass-change
guard's verdict, the alerts it sent and the job's definition in effect (``runs``); the requests an update
made where they depend on what the destination held (``run_updates.requests``); an unfinished full resync
of a job (``full_resyncs``); and each scheduler's heartbeat (``schedulers``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("throttled", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("phases", sa.Text(), nullable=True))
        batch.add_column(sa.Column("guard", sa.Text(), nullable=True))
        batch.add_column(sa.Column("alerts", sa.Text(), nullable=True))
        batch.add_column(sa.Column("definition", sa.Text(), nullable=True))
    with op.batch_alter_table("run_updates") as batch:
        batch.add_column(sa.Column("requests", sa.Text(), nullable=True))
    # A run's updates in id order: the console's pages of a run's changes read from a cursor onwards.
    op.create_index("ix_run_updates_run_id_id", "run_updates", ["run_id", "id"])
    op.create_table(
        "full_resyncs",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_full_resyncs")),
    )
    op.create_table(
        "schedulers",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_schedulers")),
    )


def downgrade() -> None:
    op.drop_table("schedulers")
    op.drop_table("full_resyncs")
    op.drop_index("ix_run_updates_run_id_id", table_name="run_updates")
    with op.batch_alter_table("run_updates") as batch:
        batch.drop_column("requests")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("definition")
        batch.drop_column("alerts")
        batch.drop_column("guard")
        batch.drop_column("phases")
        batch.drop_column("throttled")
