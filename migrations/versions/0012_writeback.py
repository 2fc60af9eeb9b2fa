"""The sync log written back to the warehouse: when a run's row and changes were written there
(``runs.written_back``), and why the last attempt failed (``runs.writeback_error``), so that the next run of
the job writes it again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("written_back", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("writeback_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("writeback_error")
        batch.drop_column("written_back")
