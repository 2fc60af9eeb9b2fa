"""The installation's own id, made once with the store, which salts the messageIds of calls sent into a
Segment workspace; and how each run rendered its calls, so that ``messages`` shows them as they were sent.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        installation,
        [{"id": uuid.uuid4().hex, "created_at": now.replace(tzinfo=None) if _sqlite() else now}],
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("calls", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("calls")
    op.drop_table("installation")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
