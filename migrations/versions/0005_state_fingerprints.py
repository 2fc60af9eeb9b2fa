"""A fingerprint of each acknowledged state, so that incremental runs read and diff only what changed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("ack_state") as batch:
        batch.add_column(sa.Column("fingerprint", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ack_state") as batch:
        batch.drop_column("fingerprint")
