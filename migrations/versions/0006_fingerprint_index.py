"""A columnar copy of each job's acknowledged fingerprints, read in one piece by incremental runs.

The fingerprints move to a new hash (``sync.snapshot.engine.SCHEME``): those recorded before are cleared, and the
first run after the upgrade compares every user's acknowledged state in full, once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "fingerprint_index",
        sa.Column("job", sa.String(length=100), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.String(length=100), nullable=False),
        sa.Column("as_of_run", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job", "part", name=op.f("pk_fingerprint_index")),
    )
    op.create_index("ix_ack_state_job_run_id", "ack_state", ["job", "run_id"])
    op.execute("UPDATE ack_state SET fingerprint = NULL")


def downgrade() -> None:
    op.drop_index("ix_ack_state_job_run_id", table_name="ack_state")
    op.drop_table("fingerprint_index")
    op.execute("UPDATE ack_state SET fingerprint = NULL")
